namespace PeftSharp.Training;

/// <summary>
/// The `peft train` keys of the LoRA variants (finetuning_type lora | lora_fa | delta_lora | vera | adalora), named
/// after peft's config fields with the method as prefix. Defaults are peft's (Delta-LoRA: the paper's).
/// </summary>
public sealed record LoraVariantSettings
{
    /// <summary>The finetuning_type values of the LoRA variants.</summary>
    public static readonly IReadOnlyList<string> FinetuningTypes = new[] { "lora", "lora_fa", "delta_lora", "vera", "adalora" };

    /// <summary>Each variant key and the finetuning types it applies to (the LoRA keys lora_rank/lora_alpha/... are checked separately).</summary>
    public static readonly IReadOnlyList<(string Key, string[] Types)> Keys = new (string, string[])[]
    {
        ("use_dora", new[] { "lora" }),
        ("use_rslora", new[] { "lora", "lora_fa", "delta_lora" }),
        ("lora_fa_optimizer", new[] { "lora_fa" }),
        ("delta_lora_update_ratio", new[] { "delta_lora" }),
        ("delta_lora_start_steps", new[] { "delta_lora" }),
        ("vera_rank", new[] { "vera" }),
        ("vera_d_initial", new[] { "vera" }),
        ("vera_projection_prng_key", new[] { "vera" }),
        ("vera_save_projection", new[] { "vera" }),
        ("adalora_init_r", new[] { "adalora" }),
        ("adalora_target_r", new[] { "adalora" }),
        ("adalora_tinit", new[] { "adalora" }),
        ("adalora_tfinal", new[] { "adalora" }),
        ("adalora_delta_t", new[] { "adalora" }),
        ("adalora_beta1", new[] { "adalora" }),
        ("adalora_beta2", new[] { "adalora" }),
        ("adalora_orth_reg_weight", new[] { "adalora" }),
        ("adalora_total_step", new[] { "adalora" }),
    };

    /// <summary>DoRA (LoraConfig.use_dora).</summary>
    public bool UseDora { get; init; }
    /// <summary>rsLoRA scaling lora_alpha/√r (LoraConfig.use_rslora).</summary>
    public bool UseRsLora { get; init; }
    /// <summary>LoRA-FA: true = peft's projected-gradient optimizer (create_lorafa_optimizer), false = plain frozen A with AdamW.</summary>
    public bool LoraFaOptimizer { get; init; } = true;
    /// <summary>Delta-LoRA λ (update_ratio).</summary>
    public double DeltaLoraUpdateRatio { get; init; } = 2;
    /// <summary>Delta-LoRA K (start_steps, 0-based optimizer step from which W is updated).</summary>
    public int DeltaLoraStartSteps { get; init; } = 500;
    public int VeraRank { get; init; } = 256;
    public double VeraDInitial { get; init; } = 0.1;
    public long VeraProjectionPrngKey { get; init; }
    public bool VeraSaveProjection { get; init; } = true;
    public int AdaLoraInitR { get; init; } = 12;
    public int AdaLoraTargetR { get; init; } = 8;
    public int AdaLoraTinit { get; init; }
    public int AdaLoraTfinal { get; init; }
    public int AdaLoraDeltaT { get; init; } = 1;
    public double AdaLoraBeta1 { get; init; } = 0.85;
    public double AdaLoraBeta2 { get; init; } = 0.85;
    public double AdaLoraOrthRegWeight { get; init; } = 0.5;
    /// <summary>total_step of the budget schedule; null: the run's total optimizer steps.</summary>
    public int? AdaLoraTotalStep { get; init; }

    /// <summary>
    /// Checks the keys and values that make no sense for <paramref name="type"/> (lora_rank for VeRA, bf16 with
    /// Delta-LoRA, ...) and the value ranges, naming the key; <paramref name="has"/> tells which keys the file sets.
    /// </summary>
    public void Validate(string type, Func<string, bool> has, double loraDropout, TrainingArguments training, bool quantized, string source)
    {
        void Check(bool ok, string message)
        {
            if (!ok) throw new PeftConfigException($"{source}: {message}");
        }
        Check(!(type == "vera" && has("lora_rank")), "lora_rank does not apply to finetuning_type vera; its rank is vera_rank (default 256)");
        Check(!(type == "adalora" && has("lora_rank")), "lora_rank does not apply to finetuning_type adalora; its ranks are adalora_init_r (start) and adalora_target_r (average at the end)");
        Check(!(type == "vera" && has("lora_alpha")), "lora_alpha does not apply to finetuning_type vera (VeRA learns its scale in vera_lambda_d / vera_lambda_b)");
        Check(!(type == "delta_lora" && loraDropout != 0), $"finetuning_type delta_lora needs lora_dropout 0 (its W update assumes dL/d(BA) = dL/dW); found {loraDropout}");
        Check(!(quantized && type is not ("lora" or "lora_fa")), $"quantization_bit supports finetuning_type lora | lora_fa, not '{type}' (Delta-LoRA updates the base weight; VeRA and AdaLoRA wrap full-precision Linear layers)");
        Check(!(type == "delta_lora" && training.Bf16), "bf16 cannot be used with finetuning_type delta_lora: the base weights would be kept in bfloat16, where Delta-LoRA's small W updates round away");
        if (type == "lora_fa" && LoraFaOptimizer)
        {
            Check(training.LoraPlusLrRatio is null, "loraplus_lr_ratio cannot be combined with the LoRA-FA optimizer (set lora_fa_optimizer: false to train B with LoRA+ and a frozen A)");
            Check(training.Optim == "adamw_torch", $"optim '{training.Optim}' cannot be combined with the LoRA-FA optimizer (lora_fa_optimizer: true brings its own)");
            Check(!has("adam_epsilon"), "adam_epsilon does not apply to the LoRA-FA optimizer (it uses peft's eps 1e-6); remove it or set lora_fa_optimizer: false");
        }
        Check(VeraRank > 0, $"vera_rank must be > 0; found {VeraRank}");
        Check(double.IsFinite(VeraDInitial), $"vera_d_initial must be a finite number; found {VeraDInitial}");
        Check(double.IsFinite(DeltaLoraUpdateRatio), $"delta_lora_update_ratio must be a finite number; found {DeltaLoraUpdateRatio}");
        Check(DeltaLoraStartSteps >= 0, $"delta_lora_start_steps must be >= 0; found {DeltaLoraStartSteps}");
        Check(AdaLoraInitR > 0 && AdaLoraTargetR > 0, $"adalora_init_r and adalora_target_r must be > 0; found {AdaLoraInitR}, {AdaLoraTargetR}");
        Check(AdaLoraTargetR <= AdaLoraInitR, $"adalora_target_r ({AdaLoraTargetR}) must not exceed adalora_init_r ({AdaLoraInitR}): the budget only shrinks");
        Check(AdaLoraTinit >= 0 && AdaLoraTfinal >= 0, $"adalora_tinit and adalora_tfinal must be >= 0; found {AdaLoraTinit}, {AdaLoraTfinal}");
        Check(AdaLoraDeltaT > 0, $"adalora_delta_t must be > 0; found {AdaLoraDeltaT}");
        Check(AdaLoraBeta1 is > 0 and < 1 && AdaLoraBeta2 is > 0 and < 1, $"adalora_beta1 and adalora_beta2 must be in (0, 1); found {AdaLoraBeta1}, {AdaLoraBeta2}");
        Check(AdaLoraOrthRegWeight > 0, $"adalora_orth_reg_weight must be > 0 (peft refuses 0); found {AdaLoraOrthRegWeight}");
        Check(AdaLoraTotalStep is null || AdaLoraTinit < AdaLoraTotalStep - AdaLoraTfinal,
            $"adalora_tinit ({AdaLoraTinit}) must be below adalora_total_step - adalora_tfinal ({AdaLoraTotalStep} - {AdaLoraTfinal}): the budget phase would be empty");
    }
}
