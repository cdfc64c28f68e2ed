using System.Text.Json.Nodes;
using PeftSharp.Models;
using PeftSharp.Tokenization;
using PeftSharp.Training.Data;
using PeftSharp.Tuners;
using PeftSharp.Tuners.Lora;
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
            var data = c.DataOptions(LabelMap(model)) with { Template = PromptTemplate.Resolve(c.Template, files, tokenizer) };
            var (train, eval) = DatasetBuilder.Load(c.ResolvePath(c.Dataset), tokenizer, data);
            ClassificationData.RequireHead(model, files, c.ResolvePath(c.Dataset), train.Concat(eval));
            var target = c.FinetuningType == "full" ? TrainingTarget.Full(model)
                : Tuners.PromptLearning.PromptFamily.FinetuningTypes.Contains(c.FinetuningType) ? AdapterTargets.PromptFamily(model, c, modelDir)
                : Tuners.AdapterHub.AdapterFamilyTypes.IsFamily(c.FinetuningType) ? AdapterTargets.Family(model, c, modelDir)
                : VariantTargets.Create(model, c, modelDir, Trainer.Schedule(c.Training, train.Count).TotalSteps);
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
    /// LLaMA-Factory's LoRA setup: a new adapter (lora_rank, lora_alpha = 2 × rank by default, lora_dropout, lora_target
    /// "all" = every linear layer but the output head) or, with adapter_name_or_path, an existing one made trainable.
    /// </summary>
    public static TrainingTarget Lora(PreTrainedModel model, TrainConfig c, string modelDir)
    {
        if (c.AdapterNameOrPath is { } adapter)
            return Peft(PeftModel.FromPretrained(model, c.ResolvePath(adapter), isTrainable: true));
        var config = LoraSettings(model, c, modelDir);
        config.Validate("lora settings");
        return Peft(PeftModel.Create(model, config));
    }

    /// <summary>The LoraConfig a YAML names (lora_rank, lora_alpha = 2 × rank by default, lora_dropout, lora_target, use_dora, use_rslora).</summary>
    public static LoraConfig LoraSettings(PreTrainedModel model, TrainConfig c, string modelDir) => new()
    {
        R = c.LoraRank,
        LoraAlpha = c.LoraAlpha ?? 2.0 * c.LoraRank,
        LoraDropout = c.LoraDropout,
        TargetModules = Targets(c, model),
        UseDora = c.Variant.UseDora,
        UseRsLora = c.Variant.UseRsLora,
        TaskType = model.IsCausalLM ? "CAUSAL_LM" : "SEQ_CLS",
        BaseModelNameOrPath = modelDir,
    };

    /// <summary>
    /// lora_target: module names, or "all" as LLaMA-Factory's find_all_linear_modules expands it: the short names of
    /// every linear layer but the output head, which is what it hands peft and so what adapter_config.json holds.
    /// </summary>
    public static StringOrList Targets(TrainConfig c, PreTrainedModel model)
    {
        var names = c.LoraTarget.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
        if (names is not ["all"]) return StringOrList.Of(names);
        var linear = TargetMatcher.ExpandAllLinear(model, model.IsCausalLM ? "CAUSAL_LM" : "SEQ_CLS");
        return StringOrList.Of(linear.Select(n => n[(n.LastIndexOf('.') + 1)..]).Distinct().ToList());
    }

    /// <summary>
    /// Prompt Tuning, P-Tuning, Prefix Tuning, P-Tuning v2 or LLaMA-Adapter (see <see cref="Tuners.PromptLearning.PromptFamily"/>):
    /// a new adapter from the YAML's settings, or with adapter_name_or_path an existing one made trainable.
    /// TEXT init reads the model folder's tokenizer.
    /// </summary>
    public static TrainingTarget PromptFamily(PreTrainedModel model, TrainConfig c, string modelDir)
    {
        if (c.AdapterNameOrPath is { } adapter)
            return Peft(PeftModel.FromPretrained(model, c.ResolvePath(adapter), isTrainable: true));
        var settings = c.Prompt.PromptTuningInit == "TEXT" ? c.Prompt with { TokenizerNameOrPath = c.Prompt.TokenizerNameOrPath ?? modelDir } : c.Prompt;
        var config = Tuners.PromptLearning.PromptFamily.Config(c.FinetuningType, settings, model.IsCausalLM ? "CAUSAL_LM" : "SEQ_CLS", model.Config.NumHiddenLayers, modelDir);
        return Peft(PeftModel.Create(model, config));
    }

    /// <summary>
    /// The adapter family (finetuning_type adapter | bitfit | mam | unipelt): a new adapter from the YAML keys, an
    /// existing one (adapter_name_or_path) made trainable, or with adapter_fusion the fusion stage over trained
    /// AdapterHub folders (saves the fusion folder).
    /// </summary>
    public static TrainingTarget Family(PreTrainedModel model, TrainConfig c, string modelDir)
    {
        if (c.AdapterNameOrPath is { } adapter)
            return Peft(PeftModel.FromPretrained(model, c.ResolvePath(adapter), isTrainable: true));
        if (c.AdapterKeys.TryGetValue("adapter_fusion", out var fusion) && fusion is not null)
        {
            var dirs = (fusion as System.Text.Json.Nodes.JsonArray ?? throw new PeftConfigException("adapter_fusion must be a list of adapter folders"))
                .Select(d => c.ResolvePath(d!.GetValue<string>())).ToList();
            var fused = Tuners.AdapterHub.AdapterFamilyTypes.FusionStage(model, dirs);
            var names = fused.Adapters.ToList();
            return Peft(fused) with { Save = dir => Tuners.AdapterHub.HubAdapters.SaveFusion(fused, dir, names) };
        }
        var config = Tuners.AdapterHub.AdapterFamilyTypes.Create(c.FinetuningType, c.AdapterKeys, "train config");
        config = config with { BaseModelNameOrPath = modelDir, TaskType = config.TaskType ?? (model.IsCausalLM ? null : "SEQ_CLS") };
        var peft = PeftModel.Create(model, config);
        return Peft(peft) with { Callbacks = Tuners.AdapterHub.AdapterFamilyTypes.TrainingCallbacks(peft, c.FinetuningType, c.AdapterKeys, c.Training.Seed) };
    }

    /// <summary>The model (with the adapter applied when given) for evaluation.</summary>
    public static TrainingTarget ForEval(PreTrainedModel model, string? adapterDir, HfTokenizer? tokenizer)
    {
        int pad = model.Config.PadTokenId ?? tokenizer?.PadTokenId ?? tokenizer?.EosTokenId ?? 0;
        if (adapterDir is not null) return Peft(PeftModel.FromPretrained(model, adapterDir)) with { PadTokenId = pad };
        return new TrainingTarget { Root = model, Model = model, Save = _ => { }, Task = TrainingTarget.TaskOf(model), PadTokenId = pad };
    }
}
