using System.Text.Json.Nodes;
using PeftSharp.Models;
using PeftSharp.Tuners.PromptLearning;

namespace PeftSharp.Tuners.PrefixTuning;

/// <summary>Prefix Tuning (Li &amp; Liang) and P-Tuning v2: learned keys/values at every layer, fed through the KV cache.</summary>
public sealed class PrefixTuningMethod : PromptLearningMethod<PrefixTuningConfig>
{
    public override string PeftType => "PREFIX_TUNING";

    public override IReadOnlyList<Recipe> Recipes { get; } = new[] { PromptFamily.Recipe("prefix_tuning"), PromptFamily.Recipe("p_tuning_v2") };
    public override IReadOnlyList<BenchEntry> Bench { get; } = new[]
    {
        PromptFamily.Bench("Prefix Tuning +proj", "prefix_tuning", 1e-2, new() { ["prefix_projection"] = true }),
        // peft has one type for both: prefix tuning without projection is P-Tuning v2's deep prompts.
        PromptFamily.Bench("Prefix Tuning / P-Tuning v2", "p_tuning_v2", 1e-2),
    };

    public override PeftConfig ParseConfig(JsonObject json, string source) => PrefixTuningConfig.FromJson(json, source);

    // peft: with key/value heads (GQA) the prefix has their size: token_dim = head_dim · kv_heads, heads = kv_heads.
    protected override PrefixTuningConfig Complete(PreTrainedModel model, PrefixTuningConfig config)
    {
        config.Validate();
        var (kvHeads, headDim) = model.KvShape;
        var c = config with { TokenDim = kvHeads * headDim, NumAttentionHeads = kvHeads };
        return c with { EncoderHiddenSize = c.EncoderHiddenSize ?? c.TokenDim };
    }

    protected override PromptLearner Create(PreTrainedModel model, PrefixTuningConfig config) => new PrefixEncoder(config);
}
