using System.Text.Json.Nodes;
using PeftSharp.Models;
using PeftSharp.Tuners.PromptLearning;

namespace PeftSharp.Tuners.PromptTuning;

/// <summary>Prompt Tuning (Lester et al.): learned virtual-token embeddings prepended to the input embeddings.</summary>
public sealed class PromptTuningMethod : PromptLearningMethod<PromptTuningConfig>
{
    public override string PeftType => "PROMPT_TUNING";

    public override IReadOnlyList<Recipe> Recipes { get; } = new[] { PromptFamily.Recipe("prompt_tuning") };
    public override IReadOnlyList<BenchEntry> Bench { get; } = new[] { PromptFamily.Bench("Prompt Tuning", "prompt_tuning", 3e-2) };

    public override PeftConfig ParseConfig(JsonObject json, string source) => PromptTuningConfig.FromJson(json, source);

    protected override PromptTuningConfig Complete(PreTrainedModel model, PromptTuningConfig config)
    {
        config.Validate();
        if (config.TokenDim != model.Config.HiddenSize)
            throw new PeftConfigException($"PROMPT_TUNING: token_dim {config.TokenDim} differs from the model's hidden size {model.Config.HiddenSize}");
        return config;
    }

    protected override PromptLearner Create(PreTrainedModel model, PromptTuningConfig config) => new PromptEmbedding(config, model);
}
