using System.Text.Json.Nodes;
using PeftSharp.Models;
using TorchSharp;

namespace PeftSharp.Tuners.PromptLearning;

/// <summary>A method whose adapter is a <see cref="PromptLearner"/> that <see cref="PeftModel"/> runs around the base forward.</summary>
public interface IPromptLearningMethod : IPeftMethod
{
    PromptLearner CreateLearner(PreTrainedModel model, PromptLearningConfig config);
}

/// <summary>
/// What Prompt Tuning, P-Tuning and Prefix Tuning share: peft's <c>_prepare_prompt_learning_config</c> (sizes
/// filled from the model config) and, for classification tasks, trainable copies of the classifier.
/// </summary>
public abstract class PromptLearningMethod<TConfig> : IPromptLearningMethod where TConfig : PromptLearningConfig
{
    public abstract string PeftType { get; }

    public virtual IReadOnlyList<Recipe> Recipes => Array.Empty<Recipe>();
    public virtual IReadOnlyList<BenchEntry> Bench => Array.Empty<BenchEntry>();
    /// <summary>Prompt-learning adapters change the inputs, not the weights: no merge, no mixed batches.</summary>
    public MethodCapabilities Capabilities { get; } = new() { Merge = false };
    public abstract PeftConfig ParseConfig(JsonObject json, string source);

    /// <summary>Builds the learner for a prepared config.</summary>
    protected abstract PromptLearner Create(PreTrainedModel model, TConfig config);

    /// <summary>Method-specific completion after the shared sizes are filled (e.g. prefix tuning's GQA sizes).</summary>
    protected virtual TConfig Complete(PreTrainedModel model, TConfig config) => config;

    protected TConfig Cast(PeftConfig c) => c as TConfig ?? throw new PeftConfigException($"{PeftType} expects a {typeof(TConfig).Name}; got {c.GetType().Name}");

    static readonly string[] ClassifierHeads = { "classifier", "score" };

    public PeftConfig Prepare(PreTrainedModel model, PeftConfig config)
    {
        var mc = model.Config;
        var c = Cast(config);
        c = c with
        {
            TokenDim = c.TokenDim ?? mc.HiddenSize,
            NumTransformerSubmodules = c.NumTransformerSubmodules ?? 1,
            NumAttentionHeads = c.NumAttentionHeads ?? mc.NumAttentionHeads,
            NumLayers = c.NumLayers ?? mc.NumHiddenLayers,
        };
        if (c.NumTransformerSubmodules != 1)
            throw new PeftConfigException($"{PeftType}: num_transformer_submodules {c.NumTransformerSubmodules} is for encoder-decoder models; PeftSharp's models need 1");
        if (c.NumLayers != mc.NumHiddenLayers)
            throw new PeftConfigException($"{PeftType}: num_layers is {c.NumLayers} but the model has {mc.NumHiddenLayers} layers");
        // peft's PeftModelForSequenceClassification adds the heads to the config (twice when it was None: once by the
        // task model, once by the shared setup; the saved files show both).
        if (c.TaskType is "SEQ_CLS")
            c = c with
            {
                ModulesToSave = c.ModulesToSave is null ? ClassifierHeads.Concat(ClassifierHeads).ToList()
                    : c.ModulesToSave.Concat(ClassifierHeads.Where(h => !c.ModulesToSave.Contains(h))).ToList(),
            };
        return Complete(model, c);
    }

    /// <summary>The prompt learner, plus the classifier copies (bounded by the model's own sizes).</summary>
    public long AdapterElements(PreTrainedModel model, PeftConfig config) => Cast(config).LearnerElements();

    public IReadOnlyList<string> Inject(PreTrainedModel model, PeftConfig config, string adapterName)
    {
        var c = Cast(config);
        if (c.ModulesToSave is not { Count: > 0 } mts) return Array.Empty<string>();
        var before = model.named_modules().Where(m => m.module is ModulesToSaveWrapper).Select(m => m.name).ToHashSet();
        Lora.LoraMethod.WrapModulesToSave(model, mts.Distinct().ToList(), adapterName, !c.InferenceMode);
        return model.named_modules().Where(m => m.module is ModulesToSaveWrapper && !before.Contains(m.name)).Select(m => m.name).ToList();
    }

    public PromptLearner CreateLearner(PreTrainedModel model, PromptLearningConfig config)
    {
        var learner = Create(model, Cast(config));
        learner.to(model.Device);
        foreach (var p in learner.parameters()) p.requires_grad = !config.InferenceMode;
        return learner;
    }
}
