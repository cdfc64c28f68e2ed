namespace PeftSharp.Tuners.IA3;

/// <summary>
/// <c>finetuning_type: ia3</c>: ia3_target (module names, or "all" = every linear layer but the output head; default:
/// peft's for the architecture), ia3_feedforward (the targets that scale their input; default: peft's) and
/// ia3_init_weights (true: ones). A classification model also trains its head (modules_to_save, as peft).
/// </summary>
public static class IA3Recipe
{
    public static readonly Recipe Recipe = new("ia3")
    {
        Keys = new[] { "ia3_target", "ia3_feedforward", "ia3_init_weights" },
        Validate = (k, s) =>
        {
            foreach (var key in new[] { "lora_rank", "lora_alpha", "lora_dropout", "lora_target" })
                if (s.Sets(key)) throw new PeftConfigException($"{s.Source}: {key} does not apply to finetuning_type ia3 (its targets are ia3_target and ia3_feedforward; it has no rank, scale or dropout)");
            k.Bool("ia3_init_weights", true);
            Config(k, null, null).Validate(s.Source);
        },
        Config = ctx =>
        {
            var c = Config(ctx.Keys, ctx.TaskType, ctx.ModelDir);
            c.Validate("ia3 settings");
            return c;
        },
    };

    static IA3Config Config(RecipeKeys k, string? taskType, string? modelDir) => new()
    {
        TargetModules = k.Names("ia3_target") is { } t ? (t is ["all"] ? StringOrList.Of(TargetMatcher.AllLinear) : StringOrList.Of(t)) : null,
        FeedforwardModules = k.Names("ia3_feedforward") is { } f ? StringOrList.Of(f) : null,
        InitIa3Weights = k.Bool("ia3_init_weights", true),
        TaskType = taskType,
        BaseModelNameOrPath = modelDir,
    };

    public static readonly BenchEntry Bench = new("IA3", "lora", 5e-2);
}
