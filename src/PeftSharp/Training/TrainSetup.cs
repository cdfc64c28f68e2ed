using System.Text.Json.Nodes;
using PeftSharp.Models;
using PeftSharp.Tokenization;
using PeftSharp.Training.Data;
using PeftSharp.Tuners;
using static TorchSharp.torch;

namespace PeftSharp.Training;

/// <summary>Everything a <see cref="TrainConfig"/> names, loaded: model (with adapter for LoRA), tokenizer, datasets and the training target.</summary>
public sealed class TrainSetup : IDisposable
{
    public required PreTrainedModel Model { get; init; }
    public HfTokenizer? Tokenizer { get; init; }
    public required TrainingTarget Target { get; init; }
    public required List<TrainExample> Train { get; init; }
    public required List<TrainExample> Eval { get; init; }
    public required string ModelDir { get; init; }
    /// <summary>Set for a 4-bit (QLoRA) base: what prepare_model_for_kbit_training did; disposed with the setup.</summary>
    public Quantization.KbitTrainingPreparation? Kbit { get; init; }

    public static TrainSetup FromConfig(TrainConfig c, Device? device = null)
    {
        var modelDir = c.ResolvePath(c.ModelNameOrPath);
        var model = AutoModel.FromPretrained(modelDir, device, quantization: c.Quantization);
        manual_seed(c.Training.Seed); // as HF's set_seed before get_peft_model: the adapter's init follows the seed
        Quantization.KbitTrainingPreparation? kbit = null;
        try
        {
            if (c.Quantization is not null) kbit = Quantization.KbitTraining.Prepare(model, c.Training.GradientCheckpointing);
            var files = IO.HfHubCache.ResolveFolder(modelDir); // modelDir stays as given (a repo id) for base_model_name_or_path
            var tokenizer = File.Exists(Path.Combine(files, HfTokenizer.TokenizerFile)) ? HfTokenizer.FromFolder(files) : null;
            var data = c.DataOptions(LabelMap(model)) with
            {
                Template = PromptTemplate.Resolve(c.Template, files, tokenizer, c.Recipe), Warn = PeftMethods.Warn, VocabSize = model.Config.VocabSize,
            };
            var (train, eval) = Recipes.RecipeData.Load(c, model, tokenizer, data);
            ClassificationData.RequireHead(model, files, c.Dataset, train.Concat(eval));
            var target = c.FinetuningType == "full" ? TrainingTarget.Full(model)
                : c.FinetuningType == "freeze" ? Recipes.FreezeTuning.Target(model, c.Recipe.Freeze)
                : AdapterTargets.Method(model, c, modelDir, Trainer.Schedule(c.Training, train.Count).TotalSteps);
            int pad = model.Config.PadTokenId ?? tokenizer?.PadTokenId ?? tokenizer?.EosTokenId ?? 0;
            target = target with { PadTokenId = pad };
            return new TrainSetup { Model = model, Tokenizer = tokenizer, Target = target, Train = train, Eval = eval, ModelDir = modelDir, Kbit = kbit };
        }
        catch { kbit?.Dispose(); model.Dispose(); throw; }
    }

    /// <summary>config.json's label2id, for string class labels.</summary>
    public static IReadOnlyDictionary<string, int>? LabelMap(PreTrainedModel model) =>
        model.Config.Raw["label2id"] is JsonObject map ? map.ToDictionary(kv => kv.Key, kv => kv.Value!.GetValue<int>()) : null;

    public void Dispose()
    {
        foreach (var callback in Target.Callbacks) (callback as IDisposable)?.Dispose();
        Kbit?.Dispose();
        Model.Dispose();
    }
}

/// <summary>Training targets for adapter methods.</summary>
public static class AdapterTargets
{
    /// <summary>Trains the PeftModel's active adapter (whatever it made trainable); saves the adapter folder.</summary>
    public static TrainingTarget Peft(PeftModel peft) => new()
    {
        Root = peft,
        Model = peft.Model,
        Save = dir => peft.SaveAdapter(dir),
        Task = TrainingTarget.TaskOf(peft.Model),
        PadTokenId = peft.Model.Config.PadTokenId ?? 0,
    };

    /// <summary>
    /// The method the recipe's finetuning_type names, applied: a new adapter from its keys (or adapter_name_or_path made
    /// trainable) with the method's training hooks. <paramref name="totalSteps"/> is the run's length.
    /// </summary>
    public static TrainingTarget Method(PreTrainedModel model, TrainConfig c, string modelDir, int totalSteps)
    {
        var (recipe, method) = PeftMethods.Recipe(c.FinetuningType);
        var peft = recipe.CreateModel(method, Context(model, c, modelDir, totalSteps), c.AdapterNameOrPath is { } dir ? c.ResolvePath(dir) : null);
        return WithHooks(Peft(peft), recipe.HooksFor(peft, c.RecipeKeys, c.RecipeSettings));
    }

    /// <summary>The adapter config the recipe describes for its finetuning_type (validated).</summary>
    public static PeftConfig Config(PreTrainedModel model, TrainConfig c, string modelDir, int totalSteps) =>
        PeftMethods.Recipe(c.FinetuningType).Recipe.Config(Context(model, c, modelDir, totalSteps));

    static RecipeContext Context(PreTrainedModel model, TrainConfig c, string modelDir, int totalSteps) => new()
    {
        Model = model, ModelDir = modelDir, Keys = c.RecipeKeys, Settings = c.RecipeSettings, TotalSteps = totalSteps, ResolvePath = c.ResolvePath,
    };

    /// <summary>
    /// <paramref name="target"/> with the hooks of finetuning_type <paramref name="finetuningType"/> (its keys' defaults)
    /// over the target's PeftModel: a hand-made adapter trained as `peft train` would.
    /// </summary>
    public static TrainingTarget WithMethodHooks(TrainingTarget target, string finetuningType)
    {
        var peft = (PeftModel)target.Root;
        return WithHooks(target, PeftMethods.Recipe(finetuningType).Recipe.HooksFor(peft, RecipeKeys.Empty, new RecipeSettings()));
    }

    /// <summary>Adds a method's optimizer, step callbacks, loss term and saving to a target.</summary>
    public static TrainingTarget WithHooks(TrainingTarget target, MethodHooks hooks) => target with
    {
        CreateOptimizer = hooks.CreateOptimizer is { } create
            ? a => create(new OptimizerArgs(a.LearningRate, a.WeightDecay, a.AdamBeta1, a.AdamBeta2, a.AdamEpsilon))
            : target.CreateOptimizer,
        Callbacks = [.. target.Callbacks, .. hooks.Callbacks],
        LossTerm = hooks.LossTerm ?? target.LossTerm,
        Save = hooks.Save ?? target.Save,
    };

    /// <summary>The model (with the adapter applied when given) for evaluation.</summary>
    public static TrainingTarget ForEval(PreTrainedModel model, string? adapterDir, HfTokenizer? tokenizer)
    {
        int pad = model.Config.PadTokenId ?? tokenizer?.PadTokenId ?? tokenizer?.EosTokenId ?? 0;
        if (adapterDir is not null) return Peft(PeftModel.FromPretrained(model, adapterDir)) with { PadTokenId = pad };
        return new TrainingTarget { Root = model, Model = model, Save = _ => { }, Task = TrainingTarget.TaskOf(model), PadTokenId = pad };
    }
}
