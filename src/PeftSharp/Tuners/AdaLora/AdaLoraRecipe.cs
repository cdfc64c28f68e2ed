namespace PeftSharp.Tuners.AdaLora;

/// <summary>
/// <c>finetuning_type: adalora</c>: adalora_init_r, adalora_target_r, adalora_tinit, adalora_tfinal, adalora_delta_t,
/// adalora_beta1/2, adalora_orth_reg_weight, adalora_total_step (default: the run's optimizer steps), with the LoRA
/// keys but lora_rank. The trainer runs the rank allocator after each step and adds the orthogonality term to the loss.
/// </summary>
public static class AdaLoraRecipe
{
    public static readonly Recipe Recipe = new("adalora")
    {
        Keys = new[]
        {
            "adalora_init_r", "adalora_target_r", "adalora_tinit", "adalora_tfinal", "adalora_delta_t", "adalora_beta1", "adalora_beta2",
            "adalora_orth_reg_weight", "adalora_total_step", Lora.LoraRecipes.AdditionalTarget,
        },
        CannotContinue = "continuing an AdaLoRA adapter is not supported (its budget schedule starts from init_r); train a new one, or its pruned result as finetuning_type lora",
        Validate = (k, s) =>
        {
            void Check(bool ok, string message)
            {
                if (!ok) throw new PeftConfigException($"{s.Source}: {message}");
            }
            Check(!s.Sets("lora_rank"), "lora_rank does not apply to finetuning_type adalora; its ranks are adalora_init_r (start) and adalora_target_r (average at the end)");
            int initR = k.Int("adalora_init_r", 12), targetR = k.Int("adalora_target_r", 8), tinit = k.Int("adalora_tinit", 0), tfinal = k.Int("adalora_tfinal", 0);
            int deltaT = k.Int("adalora_delta_t", 1);
            double beta1 = k.Double("adalora_beta1", 0.85), beta2 = k.Double("adalora_beta2", 0.85), orth = k.Double("adalora_orth_reg_weight", 0.5);
            int? total = k.OptInt("adalora_total_step");
            Check(initR > 0 && targetR > 0, $"adalora_init_r and adalora_target_r must be > 0; found {initR}, {targetR}");
            Check(targetR <= initR, $"adalora_target_r ({targetR}) must not exceed adalora_init_r ({initR}): the budget only shrinks");
            Check(tinit >= 0 && tfinal >= 0, $"adalora_tinit and adalora_tfinal must be >= 0; found {tinit}, {tfinal}");
            Check(deltaT > 0, $"adalora_delta_t must be > 0; found {deltaT}");
            Check(beta1 is > 0 and < 1 && beta2 is > 0 and < 1, $"adalora_beta1 and adalora_beta2 must be in (0, 1); found {beta1}, {beta2}");
            Check(orth > 0, $"adalora_orth_reg_weight must be > 0 (peft refuses 0); found {orth}");
            Check(total is null || tinit < total - tfinal,
                $"adalora_tinit ({tinit}) must be below adalora_total_step - adalora_tfinal ({total} - {tfinal}): the budget phase would be empty");
        },
        Config = ctx =>
        {
            var k = ctx.Keys;
            var total = k.OptInt("adalora_total_step");
            // peft's AdaLoraConfig: lora_alpha defaults to LoraConfig's 8 (r is unused: every matrix starts at init_r).
            var lora = Lora.LoraRecipes.Config(ctx) with { LoraAlpha = ctx.Settings.LoraAlpha ?? 8 };
            var c = new AdaLoraConfig
            {
                Lora = lora, InitR = k.Int("adalora_init_r", 12), TargetR = k.Int("adalora_target_r", 8),
                Tinit = k.Int("adalora_tinit", 0), Tfinal = k.Int("adalora_tfinal", 0), DeltaT = k.Int("adalora_delta_t", 1),
                Beta1 = k.Double("adalora_beta1", 0.85), Beta2 = k.Double("adalora_beta2", 0.85),
                OrthRegWeight = k.Double("adalora_orth_reg_weight", 0.5), TotalStep = total ?? ctx.TotalSteps,
                TaskType = lora.TaskType, BaseModelNameOrPath = ctx.ModelDir,
            };
            c.Validate(total is null ? $"adalora settings (total_step = the run's {ctx.TotalSteps} steps)" : "adalora settings");
            return c;
        },
        Hooks = (peft, _, _) => new MethodHooks
        {
            Callbacks = new ITrainingCallback[] { new RankAllocator(peft) },
            LossTerm = loss => AdaLoraRegularizer.AddTo(loss, peft),
        },
    };

    public static readonly BenchEntry Bench = new("AdaLoRA", "lora", 1e-2)
    {
        Settings = s => s with { LoraAlpha = 16 },
        Keys = (steps, _) => new()
        {
            ["adalora_init_r"] = 12, ["adalora_target_r"] = 8, ["adalora_tinit"] = steps / 10, ["adalora_tfinal"] = steps / 5, ["adalora_total_step"] = steps,
        },
    };
}
