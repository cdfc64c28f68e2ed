using System.Text.Json.Nodes;
using PeftSharp.Tuners.PromptLearning;

namespace PeftSharp.Tuners.PrefixTuning;

/// <summary>
/// peft's <c>PrefixTuningConfig</c> (peft_type PREFIX_TUNING): learned keys/values prepended at every layer.
/// P-Tuning v2 is this method without projection (<see cref="PTuningV2"/>): peft has no separate type for it.
/// </summary>
public sealed record PrefixTuningConfig : PromptLearningConfig
{
    public override string PeftType => "PREFIX_TUNING";
    /// <summary>Hidden size of the projection MLP; null = token_dim.</summary>
    public int? EncoderHiddenSize { get; init; }
    /// <summary>Reparameterize the prefix with Embedding → Linear → Tanh → Linear while training.</summary>
    public bool PrefixProjection { get; init; }
    /// <summary>null (default init) or "zero" (the table, or the last projection layer, starts at zero).</summary>
    public string? InitWeights { get; init; }

    /// <summary>P-Tuning v2 (Liu et al. 2110.07602): deep prompts on every layer without reparameterization, i.e. prefix tuning with prefix_projection false.</summary>
    public static PrefixTuningConfig PTuningV2(int numVirtualTokens, string? taskType = null) =>
        new() { NumVirtualTokens = numVirtualTokens, TaskType = taskType, PrefixProjection = false };

    public static PrefixTuningConfig FromJson(JsonObject json, string source)
    {
        var r = new ConfigReader(json, source);
        var c = ReadPrompt(new PrefixTuningConfig(), r) with
        {
            EncoderHiddenSize = NullableInt(r, "encoder_hidden_size", AdapterSize.MaxWidth),
            PrefixProjection = r.Bool("prefix_projection", false),
            InitWeights = r.String("init_weights"),
        };
        PeftMethods.WarnUnknown(r);
        c.Validate(source);
        return c;
    }

    public void Validate(string source = "PrefixTuningConfig")
    {
        if (InitWeights is not (null or "zero"))
            throw new PeftConfigException($"{source}: 'init_weights' must be null or \"zero\"; found '{InitWeights}'");
    }

    /// <summary>Keys and values for every layer per virtual token, or (training with prefix_projection) a token table and the projection MLP.</summary>
    public override long LearnerElements()
    {
        long d = TokenDim ?? 0, h = EncoderHiddenSize ?? d, width = AdapterSize.Mul(2L * (NumLayers ?? 0), d);
        return PrefixProjection && !InferenceMode
            ? AdapterSize.Add(AdapterSize.Mul(NumVirtualTokens + 1, d) + AdapterSize.Mul(d, h), AdapterSize.Mul(h + 1, width))
            : AdapterSize.Mul(NumVirtualTokens, width);
    }

    protected override void WriteFields(JsonObject o)
    {
        base.WriteFields(o);
        o["encoder_hidden_size"] = EncoderHiddenSize;
        o["prefix_projection"] = PrefixProjection;
        o["init_weights"] = InitWeights;
    }
}
