using System.Text.Json.Nodes;

namespace PeftSharp.Tuners.AdaptionPrompt;

/// <summary>peft's <c>AdaptionPromptConfig</c> (peft_type ADAPTION_PROMPT): LLaMA-Adapter's gated adaption prompts in the top layers.</summary>
public sealed record AdaptionPromptConfig : PeftConfig
{
    public override string PeftType => "ADAPTION_PROMPT";
    /// <summary>Name of the attention submodules; null = the model type's default ("self_attn" for llama/mistral).</summary>
    public string? TargetModules { get; init; }
    /// <summary>Prompt tokens per adapted layer (required).</summary>
    public int AdapterLen { get; init; }
    /// <summary>How many of the top layers get an adaption prompt (required).</summary>
    public int AdapterLayers { get; init; }

    public static AdaptionPromptConfig FromJson(JsonObject json, string source)
    {
        var r = new ConfigReader(json, source);
        foreach (var key in new[] { "adapter_len", "adapter_layers" })
            if (!r.Has(key)) throw new PeftConfigException($"{source}: '{key}' is required for ADAPTION_PROMPT");
        var c = ReadCommon(new AdaptionPromptConfig(), r) with
        {
            TargetModules = r.String("target_modules"),
            AdapterLen = r.Int("adapter_len", 0),
            AdapterLayers = r.Int("adapter_layers", 0),
        };
        PeftMethods.WarnUnknown(r);
        c.Validate(source);
        return c;
    }

    public void Validate(string source = "AdaptionPromptConfig")
    {
        if (AdapterLen is <= 0 or > AdapterSize.MaxTokens) throw new PeftConfigException($"{source}: 'adapter_len' must be an integer in 1..{AdapterSize.MaxTokens}; found {AdapterLen}");
        if (AdapterLayers is <= 0 or > AdapterSize.MaxLayers) throw new PeftConfigException($"{source}: 'adapter_layers' must be an integer in 1..{AdapterSize.MaxLayers}; found {AdapterLayers}");
    }

    protected override void WriteFields(JsonObject o)
    {
        o["target_modules"] = TargetModules;
        o["adapter_len"] = AdapterLen;
        o["adapter_layers"] = AdapterLayers;
    }
}
