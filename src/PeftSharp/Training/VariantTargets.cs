using PeftSharp.Models;
using PeftSharp.Tuners;
using PeftSharp.Tuners.AdaLora;
using PeftSharp.Tuners.DeltaLora;
using PeftSharp.Tuners.Lora;
using PeftSharp.Tuners.LoraFa;
using PeftSharp.Tuners.Vera;

namespace PeftSharp.Training;

/// <summary>
/// Training targets of the LoRA variants (finetuning_type lora | lora_fa | delta_lora | vera | adalora): the adapter
/// from the YAML's keys (or adapter_name_or_path made trainable) plus what the method needs from the trainer, so a
/// plain <see cref="Trainer"/> runs it: LoRA-FA's frozen A and projected-gradient optimizer, Delta-LoRA's W update
/// after each step, AdaLoRA's rank allocator and orthogonality loss term.
/// </summary>
public static class VariantTargets
{
    /// <summary>The target for <paramref name="c"/>; <paramref name="totalSteps"/> is the run's length (AdaLoRA's total_step when the YAML has none).</summary>
    public static TrainingTarget Create(PreTrainedModel model, TrainConfig c, string modelDir, int totalSteps)
    {
        var peft = c.AdapterNameOrPath is { } dir ? Load(model, c, c.ResolvePath(dir)) : PeftModel.Create(model, Config(model, c, modelDir, totalSteps));
        return WithMethodHooks(AdapterTargets.Peft(peft), c.FinetuningType, c.Variant);
    }

    /// <summary>The adapter config the YAML describes for its finetuning_type.</summary>
    public static PeftConfig Config(PreTrainedModel model, TrainConfig c, string modelDir, int totalSteps)
    {
        var v = c.Variant;
        var lora = AdapterTargets.LoraSettings(model, c, modelDir);
        PeftConfig config = c.FinetuningType switch
        {
            "lora" or "lora_fa" => lora,
            "delta_lora" => new DeltaLoraConfig
            {
                Lora = lora, UpdateRatio = v.DeltaLoraUpdateRatio, StartSteps = v.DeltaLoraStartSteps,
                TaskType = lora.TaskType, BaseModelNameOrPath = modelDir,
            },
            "vera" => new VeraConfig
            {
                R = v.VeraRank, TargetModules = lora.TargetModules, VeraDropout = c.LoraDropout, DInitial = v.VeraDInitial,
                ProjectionPrngKey = v.VeraProjectionPrngKey, SaveProjection = v.VeraSaveProjection,
                TaskType = lora.TaskType, BaseModelNameOrPath = modelDir,
            },
            // peft's AdaLoraConfig: lora_alpha defaults to LoraConfig's 8 (r is unused: every matrix starts at init_r).
            "adalora" => new AdaLoraConfig
            {
                Lora = lora with { LoraAlpha = c.LoraAlpha ?? 8 }, InitR = v.AdaLoraInitR, TargetR = v.AdaLoraTargetR,
                Tinit = v.AdaLoraTinit, Tfinal = v.AdaLoraTfinal, DeltaT = v.AdaLoraDeltaT, Beta1 = v.AdaLoraBeta1, Beta2 = v.AdaLoraBeta2,
                OrthRegWeight = v.AdaLoraOrthRegWeight, TotalStep = v.AdaLoraTotalStep ?? totalSteps,
                TaskType = lora.TaskType, BaseModelNameOrPath = modelDir,
            },
            _ => throw new PeftConfigException($"finetuning_type '{c.FinetuningType}' is not a LoRA variant ({string.Join(", ", LoraVariantSettings.FinetuningTypes)})"),
        };
        var source = $"{c.FinetuningType} settings";
        switch (config)
        {
            case LoraConfig l: l.Validate(source); break;
            case DeltaLoraConfig d: d.Validate(source); break;
            case VeraConfig ve: ve.Validate(source); break;
            case AdaLoraConfig a: a.Validate(v.AdaLoraTotalStep is null ? $"{source} (total_step = the run's {totalSteps} steps)" : source); break;
        }
        return config;
    }

    // An existing adapter made trainable; its type must be the finetuning_type's.
    static PeftModel Load(PreTrainedModel model, TrainConfig c, string dir)
    {
        var config = PeftMethods.LoadConfig(dir);
        bool ok = (c.FinetuningType, config) switch
        {
            ("lora" or "lora_fa", LoraConfig) or ("delta_lora", DeltaLoraConfig) or ("vera", VeraConfig) => true,
            ("adalora", AdaLoraConfig) => throw new PeftConfigException(
                $"adapter_name_or_path '{dir}': continuing an AdaLoRA adapter is not supported (its budget schedule starts from init_r); train a new one, or its pruned result as finetuning_type lora"),
            _ => false,
        };
        if (!ok)
        {
            var hint = config switch { LoraConfig => "lora or lora_fa", DeltaLoraConfig => "delta_lora", VeraConfig => "vera", _ => "the finetuning_type of that method" };
            throw new PeftConfigException($"adapter_name_or_path '{dir}' is a {config.PeftType} adapter; finetuning_type '{c.FinetuningType}' cannot continue it (use {hint})");
        }
        return PeftModel.FromPretrained(model, dir, isTrainable: true);
    }

    /// <summary>Adds the method's own optimizer, step hooks and loss term to a target over <paramref name="target"/>'s PeftModel.</summary>
    public static TrainingTarget WithMethodHooks(TrainingTarget target, string finetuningType, LoraVariantSettings settings)
    {
        var peft = (PeftModel)target.Root;
        switch (finetuningType)
        {
            case "lora_fa":
                LoraFa.FreezeA(peft);
                // create_lorafa_optimizer: betas (0.9, 0.999) by default, eps 1e-6, decoupled weight decay after the step.
                return settings.LoraFaOptimizer
                    ? target with { CreateOptimizer = a => new LoraFaOptimizer(peft, a.LearningRate, a.WeightDecay, a.AdamBeta1, a.AdamBeta2) }
                    : target;
            case "delta_lora":
                return target with { Callbacks = new ITrainingCallback[] { new DeltaLoraUpdater(peft) } };
            case "adalora":
                return target with { Callbacks = new ITrainingCallback[] { new RankAllocator(peft) }, LossTerm = loss => AdaLoraRegularizer.AddTo(loss, peft) };
            default:
                return target;
        }
    }
}
