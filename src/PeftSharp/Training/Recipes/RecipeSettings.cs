namespace PeftSharp.Training.Recipes;

/// <summary>LLaMA-Factory's freeze tuning: full fine-tuning of the selected decoder layers/modules (see <see cref="FreezeTuning"/>).</summary>
public sealed record FreezeSettings
{
    /// <summary>Positive: the last n layers; negative: the first n (LLaMA-Factory's default 2).</summary>
    public int TrainableLayers { get; init; } = 2;
    /// <summary>Module names inside a layer (self_attn, mlp, ...) or "all".</summary>
    public IReadOnlyList<string> TrainableModules { get; init; } = ["all"];
    /// <summary>Modules outside the layers that train too (embed_tokens, norm, lm_head, ...).</summary>
    public IReadOnlyList<string> ExtraModules { get; init; } = [];
    /// <summary>LLaMA Pro: train the layers its block expansion added (every (layers / freeze_trainable_layers)-th, from the first block's end).</summary>
    public bool UseLlamaPro { get; init; }
    /// <summary>The YAML file, for messages.</summary>
    public string Source { get; init; } = "config.yaml";
}

/// <summary>
/// The generic LLaMA-Factory data and run keys of a recipe: where datasets come from and how they mix, how
/// conversations are rendered, and what the run writes. Read by <see cref="TrainConfig"/>.
/// </summary>
public sealed record RecipeSettings
{
    /// <summary>sft (conversations with masked prompts) or pt (documents concatenated into cutoff_len blocks).</summary>
    public string Stage { get; init; } = "sft";
    /// <summary>Folder holding dataset_info.json and the files it names (LLaMA-Factory's default "data").</summary>
    public string DatasetDir { get; init; } = "data";
    public string? EvalDataset { get; init; }
    /// <summary>Keep the first N rows of each dataset.</summary>
    public int? MaxSamples { get; init; }
    /// <summary>concat, interleave_under, interleave_over or interleave_once.</summary>
    public string MixStrategy { get; init; } = "concat";
    public IReadOnlyList<double>? InterleaveProbs { get; init; }
    /// <summary>Train on the last turn only (earlier answers masked).</summary>
    public bool MaskHistory { get; init; }
    /// <summary>Replaces the template's default system prompt.</summary>
    public string? DefaultSystem { get; init; }
    /// <summary>Reasoning templates (qwen3): keep thoughts and learn the empty thought (true) or drop them into the prompt (false).</summary>
    public bool EnableThinking { get; init; } = true;
    public bool PreserveThinking { get; init; }
    /// <summary>Tool prompt style replacing the template's (default, qwen, llama3, mistral).</summary>
    public string? ToolFormat { get; init; }
    /// <summary>Packing as set; null = LLaMA-Factory's default (on for pt, off for sft).</summary>
    public bool? Packing { get; init; }
    /// <summary>Write training_loss.png (and training_eval_loss.png) as LLaMA-Factory's plot_loss does.</summary>
    public bool PlotLoss { get; init; }
    public FreezeSettings Freeze { get; init; } = new();

    static readonly string[] MixStrategies = ["concat", "interleave_under", "interleave_over", "interleave_once"];

    public static RecipeSettings Parse(RecipeValues v, double valSize, bool trainOnPrompt)
    {
        string Src(string key) => $"{v.Source}: '{key}' ({v.Where(key)})";
        var mix = v.Choice("mix_strategy", "concat", MixStrategies);
        IReadOnlyList<double>? probs = null;
        if (v.Str("interleave_probs") is { } p)
        {
            if (mix == "concat") throw new PeftConfigException($"{Src("interleave_probs")}: only valid with an interleave_* mix_strategy (mix_strategy is concat)");
            probs = p.Split(',').Select(x => double.TryParse(x.Trim(), System.Globalization.NumberStyles.Float, System.Globalization.CultureInfo.InvariantCulture, out var d) && d >= 0
                ? d : throw new PeftConfigException($"{Src("interleave_probs")}: '{x.Trim()}' is not a probability")).ToList();
            int n = (v.Str("dataset") ?? "").Split(',').Length;
            if (probs.Count != n) throw new PeftConfigException($"{Src("interleave_probs")}: {probs.Count} probabilities for {n} datasets; give one per dataset");
            if (Math.Abs(probs.Sum() - 1) > 1e-6) throw new PeftConfigException($"{Src("interleave_probs")}: the probabilities sum to {probs.Sum()}; expected 1");
        }
        var evalDataset = v.Str("eval_dataset");
        if (evalDataset is not null && valSize > 1e-6) throw new PeftConfigException($"{Src("eval_dataset")}: cannot be combined with val_size (as LLaMA-Factory); use one");
        bool maskHistory = v.Bool("mask_history", false);
        if (maskHistory && trainOnPrompt) throw new PeftConfigException($"{Src("mask_history")}: incompatible with train_on_prompt");
        if (v.Str("tool_format") is { } tf && !Data.ToolFormats.Names.Contains(tf))
            throw new PeftConfigException($"{Src("tool_format")}: '{tf}' is not known (supported: {string.Join(", ", Data.ToolFormats.Names)})");
        var maxSamples = v.OptInt("max_samples");
        if (maxSamples is <= 0) throw new PeftConfigException($"{Src("max_samples")}: expected a positive row count");
        static IReadOnlyList<string> Names(string? s) => s is null ? [] : s.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
        return new RecipeSettings
        {
            Stage = v.Str("stage") ?? "sft",
            DatasetDir = v.Str("dataset_dir") ?? "data",
            EvalDataset = evalDataset,
            MaxSamples = maxSamples,
            MixStrategy = mix,
            InterleaveProbs = probs,
            MaskHistory = maskHistory,
            DefaultSystem = v.Contains("default_system") ? v.Str("default_system") ?? "" : null,
            EnableThinking = v.Bool("enable_thinking", true),
            PreserveThinking = v.Bool("preserve_thinking", false),
            ToolFormat = v.Str("tool_format"),
            Packing = v.OptBool("packing"),
            PlotLoss = v.Bool("plot_loss", false),
            Freeze = new FreezeSettings
            {
                TrainableLayers = v.Int("freeze_trainable_layers", 2),
                TrainableModules = Names(v.Str("freeze_trainable_modules") ?? "all"),
                ExtraModules = Names(v.Str("freeze_extra_modules")),
                UseLlamaPro = v.Bool("use_llama_pro", false),
                Source = v.Source,
            },
        };
    }
}
