namespace PeftSharp.Training;

/// <summary>
/// Hyperparameters of a run, with HF TrainingArguments' names and defaults (lr 5e-5, AdamW betas 0.9/0.999,
/// eps 1e-8, no weight decay, max_grad_norm 1, linear schedule, seed 42).
/// </summary>
public sealed record TrainingArguments
{
    public string OutputDir { get; init; } = "output";
    public double LearningRate { get; init; } = 5e-5;
    public double WeightDecay { get; init; }
    public double AdamBeta1 { get; init; } = 0.9;
    public double AdamBeta2 { get; init; } = 0.999;
    public double AdamEpsilon { get; init; } = 1e-8;
    /// <summary>Clip the global gradient L2 norm to this value; 0 or less turns clipping off.</summary>
    public double MaxGradNorm { get; init; } = 1.0;
    public double NumTrainEpochs { get; init; } = 3.0;
    /// <summary>Optimizer steps to run; when positive it overrides <see cref="NumTrainEpochs"/>.</summary>
    public int MaxSteps { get; init; } = -1;
    public int PerDeviceTrainBatchSize { get; init; } = 8;
    public int PerDeviceEvalBatchSize { get; init; } = 8;
    public int GradientAccumulationSteps { get; init; } = 1;
    /// <summary>constant, constant_with_warmup, linear or cosine.</summary>
    public string LrSchedulerType { get; init; } = "linear";
    public int WarmupSteps { get; init; }
    public double WarmupRatio { get; init; }
    public int LoggingSteps { get; init; } = 10;
    /// <summary>Save a checkpoint every N optimizer steps (0: only at the end).</summary>
    public int SaveSteps { get; init; }
    /// <summary>Evaluate every N optimizer steps (0: only at the end when an eval set exists).</summary>
    public int EvalSteps { get; init; }
    /// <summary>Keep at most this many checkpoint-N folders (0: keep all).</summary>
    public int SaveTotalLimit { get; init; }
    public int Seed { get; init; } = 42;
    public bool Shuffle { get; init; } = true;
    /// <summary>Frozen base weights and their matmuls in bfloat16; trainable weights, gradients and optimizer state stay float32.</summary>
    public bool Bf16 { get; init; }
    public bool GradientCheckpointing { get; init; }
    /// <summary>HF's optimizer name: adamw_torch, adamw_8bit, paged_adamw_8bit or paged_adamw_32bit (see BnbAdamW).</summary>
    public string Optim { get; init; } = "adamw_torch";
    /// <summary>LoRA+: lora_B (and 1-D trainable tensors) train at lr × this ratio (peft's create_loraplus_optimizer).</summary>
    public double? LoraPlusLrRatio { get; init; }
    /// <summary>LoRA+ learning rate of LoRA embedding A/B (peft's loraplus_lr_embedding).</summary>
    public double LoraPlusLrEmbedding { get; init; } = 1e-6;
    /// <summary>A checkpoint folder, or "true"/"last" for the newest checkpoint-N in <see cref="OutputDir"/>.</summary>
    public string? ResumeFromCheckpoint { get; init; }
    /// <summary>transformers' lr_scheduler_kwargs (cosine_with_min_lr: min_lr or min_lr_rate; num_cycles; power, lr_end).</summary>
    public IReadOnlyDictionary<string, double> LrSchedulerKwargs { get; init; } = new Dictionary<string, double>();
    /// <summary>no (only the final evaluation), steps (every eval_steps, logging_steps when 0) or epoch.</summary>
    public string EvalStrategy { get; init; } = "no";
    /// <summary>steps (every save_steps, when > 0), epoch, best (when the tracked metric improves) or no.</summary>
    public string SaveStrategy { get; init; } = "steps";
    /// <summary>No periodic evaluation before this step.</summary>
    public double EvalDelay { get; init; }
    public bool EvalOnStart { get; init; }
    public bool LoggingFirstStep { get; init; }
    /// <summary>After training, restore the checkpoint with the best <see cref="MetricForBestModel"/> before saving.</summary>
    public bool LoadBestModelAtEnd { get; init; }
    /// <summary>An evaluation metric (loss, eval_loss, perplexity, accuracy); HF's default "loss" when best-model tracking is on.</summary>
    public string? MetricForBestModel { get; init; }
    /// <summary>Null: true unless the metric name ends in "loss" (HF).</summary>
    public bool? GreaterIsBetter { get; init; }
    /// <summary>NEFTune: uniform noise of alpha/sqrt(L·d) added to the input embeddings while training.</summary>
    public double? NeftuneNoiseAlpha { get; init; }
    /// <summary>Clear an output_dir that holds an earlier run's checkpoints instead of refusing it.</summary>
    public bool OverwriteOutputDir { get; init; }
    /// <summary>Where log entries also go: "none", or "tensorboard" (event files in <see cref="LoggingDir"/>; "all" means the same).</summary>
    public IReadOnlyList<string> ReportTo { get; init; } = Array.Empty<string>();
    /// <summary>TensorBoard's run folder; null: output_dir/runs/DATE_HOST, as transformers.</summary>
    public string? LoggingDir { get; init; }
    /// <summary>Call malloc_trim every N steps (glibc keeps freed tensor memory otherwise).</summary>
    public int TrimMemorySteps { get; init; } = 50;

    public void Validate()
    {
        void Check(bool ok, string name, object value, string expected)
        {
            if (!ok) throw new PeftConfigException($"training argument '{name}' is {value}; expected {expected}");
        }
        Check(LearningRate >= 0 && double.IsFinite(LearningRate), "learning_rate", LearningRate, "a finite number >= 0");
        Check(WeightDecay >= 0, "weight_decay", WeightDecay, ">= 0");
        Check(AdamBeta1 is >= 0 and < 1, "adam_beta1", AdamBeta1, "in [0, 1)");
        Check(AdamBeta2 is >= 0 and < 1, "adam_beta2", AdamBeta2, "in [0, 1)");
        Check(AdamEpsilon > 0, "adam_epsilon", AdamEpsilon, "> 0");
        Check(PerDeviceTrainBatchSize > 0, "per_device_train_batch_size", PerDeviceTrainBatchSize, "> 0");
        Check(PerDeviceEvalBatchSize > 0, "per_device_eval_batch_size", PerDeviceEvalBatchSize, "> 0");
        Check(GradientAccumulationSteps > 0, "gradient_accumulation_steps", GradientAccumulationSteps, "> 0");
        Check(MaxSteps > 0 || NumTrainEpochs > 0, "num_train_epochs", NumTrainEpochs, "> 0 when max_steps is not set");
        Check(WarmupSteps >= 0, "warmup_steps", WarmupSteps, ">= 0");
        Check(WarmupRatio is >= 0 and <= 1, "warmup_ratio", WarmupRatio, "in [0, 1]");
        Check(LoggingSteps > 0, "logging_steps", LoggingSteps, "> 0");
        Check(SaveSteps >= 0, "save_steps", SaveSteps, ">= 0");
        Check(EvalSteps >= 0, "eval_steps", EvalSteps, ">= 0");
        Check(SaveTotalLimit >= 0, "save_total_limit", SaveTotalLimit, ">= 0");
        Check(LoraPlusLrRatio is null or > 0, "loraplus_lr_ratio", LoraPlusLrRatio!, "> 0");
        Check(EvalStrategy is "no" or "steps" or "epoch", "eval_strategy", EvalStrategy, "no, steps or epoch");
        Check(SaveStrategy is "no" or "steps" or "epoch" or "best", "save_strategy", SaveStrategy, "no, steps, epoch or best");
        Check(NeftuneNoiseAlpha is null or >= 0, "neftune_noise_alpha", NeftuneNoiseAlpha!, ">= 0");
        TrainingStrategies.Validate(this);
        LrSchedule.Validate(LrSchedulerType, LrSchedulerKwargs);
        foreach (var r in ReportTo) Check(r is "none" or "tensorboard" or "all", "report_to", r, "none or tensorboard (the integration PeftSharp writes)");
        Optimizers.BnbAdamWOptions.FromOptimName(Optim);
    }

    /// <summary>Warmup steps as transformers computes them: warmup_steps if set, else ceil(ratio × total).</summary>
    public int WarmupStepsFor(int totalSteps) => WarmupSteps > 0 ? WarmupSteps : (int)Math.Ceiling(WarmupRatio * totalSteps);
}
