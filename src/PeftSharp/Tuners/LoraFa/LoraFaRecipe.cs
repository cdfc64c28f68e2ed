namespace PeftSharp.Tuners.LoraFa;

/// <summary>
/// <c>finetuning_type: lora_fa</c>: a LoRA adapter (peft_type LORA, so it continues LoRA folders) whose A stays frozen;
/// lora_fa_optimizer (default true) trains B with peft's projected-gradient optimizer, false with the run's AdamW.
/// </summary>
public static class LoraFaRecipe
{
    public static readonly Recipe Recipe = new("lora_fa")
    {
        Keys = new[] { "use_rslora", "lora_fa_optimizer", Lora.LoraRecipes.AdditionalTarget },
        QuantizedBase = true,
        Validate = (keys, s) =>
        {
            keys.Bool("use_rslora", false);
            if (!keys.Bool("lora_fa_optimizer", true)) return;
            void Check(bool ok, string message)
            {
                if (!ok) throw new PeftConfigException($"{s.Source}: {message}");
            }
            Check(s.LoraPlusLrRatio is null, "loraplus_lr_ratio cannot be combined with the LoRA-FA optimizer (set lora_fa_optimizer: false to train B with LoRA+ and a frozen A)");
            Check(s.Optim == "adamw_torch", $"optim '{s.Optim}' cannot be combined with the LoRA-FA optimizer (lora_fa_optimizer: true brings its own)");
            Check(!s.Sets("adam_epsilon"), "adam_epsilon does not apply to the LoRA-FA optimizer (it uses peft's eps 1e-6); remove it or set lora_fa_optimizer: false");
        },
        Config = ctx =>
        {
            var c = Lora.LoraRecipes.Config(ctx);
            c.Validate("lora_fa settings");
            return c;
        },
        Hooks = (peft, keys, _) =>
        {
            LoraFa.FreezeA(peft);
            // create_lorafa_optimizer: betas (0.9, 0.999) by default, eps 1e-6, decoupled weight decay after the step.
            return keys.Bool("lora_fa_optimizer", true)
                ? new MethodHooks { CreateOptimizer = a => new LoraFaOptimizer(peft, a.LearningRate, a.WeightDecay, a.Beta1, a.Beta2) }
                : MethodHooks.None;
        },
    };

    public static readonly BenchEntry Bench = new("LoRA-FA", "lora", 1e-2) { Recipe = "lora_fa" };
}
