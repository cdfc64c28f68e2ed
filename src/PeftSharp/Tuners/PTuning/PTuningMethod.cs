using System.Text.Json.Nodes;
using PeftSharp.Models;
using PeftSharp.Tuners.PromptLearning;

namespace PeftSharp.Tuners.PTuning;

/// <summary>P-Tuning (Liu et al., v1): virtual tokens produced by a small MLP/LSTM encoder, prepended to the input embeddings.</summary>
public sealed class PTuningMethod : PromptLearningMethod<PromptEncoderConfig>
{
    public override string PeftType => "P_TUNING";

    public override IReadOnlyList<Recipe> Recipes { get; } = new[] { PromptFamily.Recipe("p_tuning") };
    public override IReadOnlyList<BenchEntry> Bench { get; } = new[]
    {
        PromptFamily.Bench("P-Tuning MLP", "p_tuning", 1e-2),
        PromptFamily.Bench("P-Tuning LSTM", "p_tuning", 1e-2, new() { ["encoder_reparameterization_type"] = "LSTM" }),
    };

    public override PeftConfig ParseConfig(JsonObject json, string source) => PromptEncoderConfig.FromJson(json, source);

    protected override PromptEncoderConfig Complete(PreTrainedModel model, PromptEncoderConfig config)
    {
        config.Validate();
        if (config.TokenDim != model.Config.HiddenSize)
            throw new PeftConfigException($"P_TUNING: token_dim {config.TokenDim} differs from the model's hidden size {model.Config.HiddenSize}");
        return config with { EncoderHiddenSize = config.EncoderHiddenSize ?? config.TokenDim };
    }

    protected override PromptLearner Create(PreTrainedModel model, PromptEncoderConfig config) => new PromptEncoder(config);
}
