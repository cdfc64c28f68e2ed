using System.Text.Json.Nodes;
using PeftSharp.Models;
using PeftSharp.Tuners.PromptLearning;

namespace PeftSharp.Tuners.PrefixTuning;

/// <summary>Prefix Tuning (Li &amp; Liang) and P-Tuning v2: learned keys/values at every layer, fed through the KV cache.</summary>
public sealed class PrefixTuningMethod : PromptLearningMethod<PrefixTuningConfig>
{
    public override string PeftType => "PREFIX_TUNING";

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
