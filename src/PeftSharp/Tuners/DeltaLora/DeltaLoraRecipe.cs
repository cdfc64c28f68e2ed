namespace PeftSharp.Tuners.DeltaLora;

/// <summary>
/// <c>finetuning_type: delta_lora</c>: the LoRA keys plus delta_lora_update_ratio (λ, default the paper's 2) and
/// delta_lora_start_steps (K, default 500); the trainer runs its W update after each optimizer step.
/// </summary>
public static class DeltaLoraRecipe
{
    public static readonly Recipe Recipe = new("delta_lora")
    {
        Keys = new[] { "use_rslora", "delta_lora_update_ratio", "delta_lora_start_steps", Lora.LoraRecipes.AdditionalTarget },
        NoBf16 = "the base weights would be kept in bfloat16, where Delta-LoRA's small W updates round away",
        Validate = (keys, s) =>
        {
            void Check(bool ok, string message)
            {
                if (!ok) throw new PeftConfigException($"{s.Source}: {message}");
            }
            keys.Bool("use_rslora", false);
            Check(s.LoraDropout == 0, $"finetuning_type delta_lora needs lora_dropout 0 (its W update assumes dL/d(BA) = dL/dW); found {s.LoraDropout}");
            var ratio = keys.Double("delta_lora_update_ratio", 2);
            Check(double.IsFinite(ratio), $"delta_lora_update_ratio must be a finite number; found {ratio}");
            var start = keys.Int("delta_lora_start_steps", 500);
            Check(start >= 0, $"delta_lora_start_steps must be >= 0; found {start}");
        },
        Config = ctx =>
        {
            var lora = Lora.LoraRecipes.Config(ctx);
            var c = new DeltaLoraConfig
            {
                Lora = lora, UpdateRatio = ctx.Keys.Double("delta_lora_update_ratio", 2), StartSteps = ctx.Keys.Int("delta_lora_start_steps", 500),
                TaskType = lora.TaskType, BaseModelNameOrPath = ctx.ModelDir,
            };
            c.Validate("delta_lora settings");
            return c;
        },
        Hooks = (peft, _, _) => new MethodHooks { Callbacks = new ITrainingCallback[] { new DeltaLoraUpdater(peft) } },
    };

    // W also takes λ = 2 times the factors' step, so the effective weight moves 3× LoRA's per step at one rate.
    public static readonly BenchEntry Bench = new("Delta-LoRA", "lora", 2.5e-3)
    {
        Keys = (steps, _) => new() { ["delta_lora_start_steps"] = steps / 4 },
    };
}
