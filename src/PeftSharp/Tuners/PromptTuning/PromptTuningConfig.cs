using System.Text.Json.Nodes;
using PeftSharp.Tuners.PromptLearning;

namespace PeftSharp.Tuners.PromptTuning;

/// <summary>peft's <c>PromptTuningConfig</c> (peft_type PROMPT_TUNING): a learned table of virtual-token embeddings.</summary>
public sealed record PromptTuningConfig : PromptLearningConfig
{
    public override string PeftType => "PROMPT_TUNING";
    /// <summary>RANDOM (N(0,1), default), TEXT (embeddings of prompt_tuning_init_text's tokens) or SAMPLE_VOCAB (random vocabulary rows).</summary>
    public string PromptTuningInit { get; init; } = "RANDOM";
    public string? PromptTuningInitText { get; init; }
    /// <summary>A tokenizer folder (PeftSharp reads tokenizer.json from a local folder; no hub download).</summary>
    public string? TokenizerNameOrPath { get; init; }
    public JsonNode? TokenizerKwargs { get; init; }

    public static readonly string[] Inits = { "RANDOM", "TEXT", "SAMPLE_VOCAB" };

    public static PromptTuningConfig FromJson(JsonObject json, string source)
    {
        var r = new ConfigReader(json, source);
        var c = ReadPrompt(new PromptTuningConfig(), r) with
        {
            PromptTuningInit = r.String("prompt_tuning_init") ?? "RANDOM",
            PromptTuningInitText = r.String("prompt_tuning_init_text"),
            TokenizerNameOrPath = r.String("tokenizer_name_or_path"),
            TokenizerKwargs = r.Node("tokenizer_kwargs"),
        };
        PeftMethods.WarnUnknown(r);
        c.Validate(source);
        return c;
    }

    public void Validate(string source = "PromptTuningConfig")
    {
        if (!Inits.Contains(PromptTuningInit))
            throw new PeftConfigException($"{source}: 'prompt_tuning_init' must be one of {string.Join(", ", Inits)}; found '{PromptTuningInit}'");
        if (PromptTuningInit == "TEXT" && !InferenceMode && (PromptTuningInitText is null || TokenizerNameOrPath is null))
            throw new PeftConfigException($"{source}: prompt_tuning_init TEXT needs 'prompt_tuning_init_text' and 'tokenizer_name_or_path'");
    }

    /// <summary>The virtual-token embedding table.</summary>
    public override long LearnerElements() => AdapterSize.Mul(TotalVirtualTokens, TokenDim ?? 0);

    protected override void WriteFields(JsonObject o)
    {
        base.WriteFields(o);
        o["prompt_tuning_init"] = PromptTuningInit;
        o["prompt_tuning_init_text"] = PromptTuningInitText;
        o["tokenizer_name_or_path"] = TokenizerNameOrPath;
        o["tokenizer_kwargs"] = TokenizerKwargs?.DeepClone();
    }
}
