using System.Globalization;
using PeftSharp.Training.Data;
using YamlDotNet.RepresentationModel;

namespace PeftSharp.Training;

/// <summary>
/// A `peft train` YAML file with LLaMA-Factory's key names (plus HF TrainingArguments' optimizer keys,
/// <c>dataset_format</c> and <c>shuffle</c>). Unknown keys are an error that lists the valid ones.
/// </summary>
public sealed record TrainConfig
{
    public required string ModelNameOrPath { get; init; }
    public string? AdapterNameOrPath { get; init; }
    /// <summary>full, or a method's finetuning_type (lora, lora_fa, vera, prompt_tuning, adapter, ...: see <see cref="Tuners.PeftMethods.FinetuningTypes"/>).</summary>
    public string FinetuningType { get; init; } = "lora";
    public int LoraRank { get; init; } = 8;
    public double? LoraAlpha { get; init; }
    public double LoraDropout { get; init; }
    /// <summary>Module names (comma separated) or "all" (every linear layer but the output head).</summary>
    public string LoraTarget { get; init; } = "all";
    public required string Dataset { get; init; }
    public DatasetFormat? DatasetFormat { get; init; }
    public string? Template { get; init; }
    public int CutoffLen { get; init; } = 2048;
    public bool TrainOnPrompt { get; init; }
    public bool Packing { get; init; }
    public double ValSize { get; init; }
    public required TrainingArguments Training { get; init; }
    /// <summary>The method-specific keys the file sets (use_dora, vera_rank, num_virtual_tokens, reduction_factor, ...) as JSON values; the method reads its own.</summary>
    public IReadOnlyDictionary<string, System.Text.Json.Nodes.JsonNode?> MethodKeys { get; init; } = new Dictionary<string, System.Text.Json.Nodes.JsonNode?>();
    /// <summary>Every key the file sets (generic or the method's).</summary>
    public IReadOnlySet<string> KeysSet { get; init; } = new HashSet<string>();
    /// <summary>The YAML file, for messages.</summary>
    public string Source { get; init; } = "config.yaml";
    /// <summary>From quantization_bit (4) / quantization_type / double_quantization: load the base 4-bit (QLoRA).</summary>
    public PeftSharp.Quantization.BitsAndBytesConfig? Quantization { get; init; }
    /// <summary>LLaMA-Factory's generic data and run keys (dataset_dir, mixing, eval_dataset, templates' system/thinking/tools, freeze, outputs).</summary>
    public Recipes.RecipeSettings Recipe { get; init; } = new();
    /// <summary>One line per accepted key that has no effect here, saying why.</summary>
    public IReadOnlyList<string> Warnings { get; init; } = [];
    /// <summary>Folder of the YAML file; relative paths that do not exist from the working folder are tried from here.</summary>
    public string BaseDir { get; init; } = ".";

    static readonly string[] Keys =
    [
        "model_name_or_path", "adapter_name_or_path", "finetuning_type", "lora_rank", "lora_alpha", "lora_dropout", "lora_target",
        "dataset", "dataset_format", "template", "cutoff_len", "train_on_prompt", "packing", "val_size", "shuffle",
        "learning_rate", "num_train_epochs", "max_steps", "per_device_train_batch_size", "per_device_eval_batch_size",
        "gradient_accumulation_steps", "lr_scheduler_type", "warmup_ratio", "warmup_steps", "logging_steps", "save_steps",
        "eval_steps", "save_total_limit", "output_dir", "seed", "bf16", "gradient_checkpointing", "loraplus_lr_ratio",
        "resume_from_checkpoint", "weight_decay", "adam_beta1", "adam_beta2", "adam_epsilon", "max_grad_norm",
        "stage", "do_train", "plot_loss", "overwrite_output_dir", "report_to", "logging_dir",
        "optim", "quantization_bit", "quantization_method", "quantization_type", "double_quantization",
        // each method's own keys (use_dora, vera_rank, num_virtual_tokens, reduction_factor, ...), declared by its recipes
        .. Tuners.PeftMethods.RecipeKeyNames,
    ];

    static readonly HashSet<string> MethodKeyNames = Tuners.PeftMethods.RecipeKeyNames.ToHashSet();

    /// <summary>finetuning_type values that are not a method's (no adapter).</summary>
    static readonly string[] GenericTypes = ["full", "freeze"];

    // A YAML scalar or list as the JSON value an adapter config expects (bool, number, string, list).
    static System.Text.Json.Nodes.JsonNode? ToJson(YamlNode node) => node switch
    {
        YamlSequenceNode seq => new System.Text.Json.Nodes.JsonArray(seq.Children.Select(ToJson).ToArray()),
        YamlScalarNode { Value: null or "" or "null" or "~" } => null,
        YamlScalarNode s when s.Style is YamlDotNet.Core.ScalarStyle.SingleQuoted or YamlDotNet.Core.ScalarStyle.DoubleQuoted => s.Value,
        YamlScalarNode s when bool.TryParse(s.Value, out var b) => b,
        YamlScalarNode s when long.TryParse(s.Value, NumberStyles.Integer, CultureInfo.InvariantCulture, out var l) => l,
        YamlScalarNode s when double.TryParse(s.Value, NumberStyles.Float, CultureInfo.InvariantCulture, out var d) => d,
        YamlScalarNode s => s.Value,
        _ => throw new PeftConfigException($"line {node.Start.Line}: expected a value or a list"),
    };

    /// <summary>The keys the tuning methods read (the generic rest is <see cref="Recipes.RecipeKeys"/>).</summary>
    public static IReadOnlyList<string> KnownKeys => Keys;

    /// <summary>Every key this parser acts on (method keys and the honoured generic ones).</summary>
    public static IReadOnlyList<string> ValidKeys => Keys.Concat(Recipes.RecipeKeys.Honoured).ToList();

    public static TrainConfig Load(string path, IReadOnlyList<string>? overrides = null)
    {
        if (!File.Exists(path)) throw new PeftFormatException(path, "config file not found");
        return Parse(File.ReadAllText(path), path, overrides);
    }

    /// <summary>Parses a YAML recipe; <paramref name="overrides"/> are <c>key=value</c> pairs applied on top (llamafactory-cli style).</summary>
    public static TrainConfig Parse(string yaml, string source = "config.yaml", IReadOnlyList<string>? overrides = null)
    {
        var rv = Recipes.RecipeValues.Read(yaml, source, overrides);
        var values = rv.Keys.ToDictionary(k => k, rv.Node);
        string? Str(string key) => rv.Str(key);
        int Int(string key, int fallback) => rv.Int(key, fallback);
        double Dbl(string key, double fallback) => rv.Dbl(key, fallback);
        double? OptDbl(string key) => rv.OptDbl(key);
        bool Bool(string key, bool fallback) => rv.Bool(key, fallback);
        string Required(string key) => rv.Required(key);

        var stage = Str("stage");
        if (stage is not null and not "sft" and not "pt")
            throw new PeftConfigException($"{source}: stage '{stage}' ({rv.Where("stage")}) is not supported: " +
                (stage is "dpo" or "kto" or "rm" or "ppo" ? "preference and reward training are not available; " : "") + "supported: sft, pt");
        if (!Bool("do_train", true)) throw new PeftConfigException($"{source}: do_train is false; use `peft eval` to evaluate");
        var finetuning = Str("finetuning_type") ?? "lora";
        var recipe = Tuners.PeftMethods.FindRecipe(finetuning)?.Recipe;
        if (recipe is null && !GenericTypes.Contains(finetuning))
            throw new PeftConfigException($"{source}: finetuning_type '{finetuning}' is not supported (supported: {string.Join(", ", [.. Tuners.PeftMethods.FinetuningTypes, .. GenericTypes])})");
        if (Bool("use_llama_pro", false) && finetuning != "freeze")
            throw new PeftConfigException($"{source}: use_llama_pro ({rv.Where("use_llama_pro")}) trains the expanded layers with finetuning_type freeze here (not {finetuning})");
        var methodKeys = values.Keys.Where(MethodKeyNames.Contains).ToDictionary(k => k, k => ToJson(values[k]));
        var training = new TrainingArguments
        {
            OutputDir = Str("output_dir") ?? "output",
            LearningRate = Dbl("learning_rate", 5e-5),
            NumTrainEpochs = Dbl("num_train_epochs", 3.0),
            MaxSteps = Int("max_steps", -1),
            PerDeviceTrainBatchSize = Int("per_device_train_batch_size", 8),
            PerDeviceEvalBatchSize = Int("per_device_eval_batch_size", 8),
            GradientAccumulationSteps = Int("gradient_accumulation_steps", 1),
            LrSchedulerType = Str("lr_scheduler_type") ?? "linear",
            WarmupRatio = Dbl("warmup_ratio", 0),
            WarmupSteps = Int("warmup_steps", 0),
            LoggingSteps = Int("logging_steps", 10),
            SaveSteps = Int("save_steps", 0),
            EvalSteps = Int("eval_steps", 0),
            SaveTotalLimit = Int("save_total_limit", 0),
            Seed = Int("seed", 42),
            Shuffle = Bool("shuffle", true) && !Bool("disable_shuffling", false) && rv.Choice("train_sampling_strategy", "random", "random", "sequential") == "random",
            EvalStrategy = rv.Choice("eval_strategy", Str("evaluation_strategy") ?? "no", "no", "steps", "epoch"),
            SaveStrategy = rv.Choice("save_strategy", "steps", "no", "steps", "epoch", "best"),
            EvalDelay = Dbl("eval_delay", 0),
            EvalOnStart = Bool("eval_on_start", false),
            LoggingFirstStep = Bool("logging_first_step", false) && rv.Choice("logging_strategy", "steps", "steps") == "steps",
            LoadBestModelAtEnd = Bool("load_best_model_at_end", false),
            MetricForBestModel = Str("metric_for_best_model"),
            GreaterIsBetter = rv.OptBool("greater_is_better"),
            LrSchedulerKwargs = rv.NumberMap("lr_scheduler_kwargs"),
            NeftuneNoiseAlpha = OptDbl("neftune_noise_alpha"),
            LoraPlusLrEmbedding = Dbl("loraplus_lr_embedding", 1e-6),
            Bf16 = Bool("bf16", false),
            GradientCheckpointing = Bool("gradient_checkpointing", false),
            LoraPlusLrRatio = OptDbl("loraplus_lr_ratio"),
            ResumeFromCheckpoint = Str("resume_from_checkpoint"),
            OverwriteOutputDir = Bool("overwrite_output_dir", false),
            WeightDecay = Dbl("weight_decay", 0),
            AdamBeta1 = Dbl("adam_beta1", 0.9),
            AdamBeta2 = Dbl("adam_beta2", 0.999),
            AdamEpsilon = Dbl("adam_epsilon", 1e-8),
            MaxGradNorm = Dbl("max_grad_norm", 1.0),
            Optim = Str("optim") ?? "adamw_torch",
            ReportTo = (Str("report_to") ?? "none").Split(',', StringSplitOptions.TrimEntries | StringSplitOptions.RemoveEmptyEntries),
            LoggingDir = Str("logging_dir"),
        };
        try { training.Validate(); }
        catch (PeftConfigException e) { throw new PeftConfigException($"{source}: {e.Message}"); }
        var format = Str("dataset_format");
        // LLaMA-Factory names bitsandbytes "bnb" (older releases and its examples: "bitsandbytes").
        if ((Str("quantization_method") ?? "bnb") is not ("bnb" or "bitsandbytes"))
            throw new PeftConfigException($"{source}: quantization_method '{Str("quantization_method")}' ({rv.Where("quantization_method")}) is not supported (supported: bnb, also spelled bitsandbytes)");
        var quantization = PeftSharp.Quantization.BitsAndBytesConfig.FromLlamaFactory(Str("quantization_bit") is null ? null : Int("quantization_bit", 0),
            Str("quantization_type") ?? "nf4", Bool("double_quantization", true), training.Bf16 ? "bfloat16" : "float32", source);
        if (quantization is not null && GenericTypes.Contains(finetuning))
            throw new PeftConfigException($"{source}: quantization_bit needs finetuning_type lora (4-bit weights cannot be trained)");
        var config = new TrainConfig
        {
            Quantization = quantization,
            ModelNameOrPath = Required("model_name_or_path"),
            AdapterNameOrPath = Str("adapter_name_or_path"),
            FinetuningType = finetuning,
            LoraRank = Int("lora_rank", 8),
            LoraAlpha = OptDbl("lora_alpha"),
            LoraDropout = Dbl("lora_dropout", 0),
            LoraTarget = Str("lora_target") ?? "all",
            Dataset = Required("dataset"),
            DatasetFormat = format is null ? null : DatasetFormats.Parse(format),
            Template = Str("template"),
            CutoffLen = Int("cutoff_len", 2048),
            TrainOnPrompt = Bool("train_on_prompt", false),
            Packing = Bool("packing", false),
            ValSize = Dbl("val_size", 0),
            Training = training,
            MethodKeys = methodKeys,
            KeysSet = values.Keys.ToHashSet(),
            Source = source,
            BaseDir = Path.GetDirectoryName(Path.GetFullPath(source)) ?? ".",
            Recipe = Recipes.RecipeSettings.Parse(rv, Dbl("val_size", 0), Bool("train_on_prompt", false)),
            Warnings = rv.Warnings,
        };
        config.CheckMethodKeys(recipe);
        return config;
    }

    /// <summary>The method's keys as its recipe reads them.</summary>
    public Tuners.RecipeKeys RecipeKeys => new(MethodKeys, Source);

    /// <summary>The generic settings a method's recipe may read (LoRA arguments, precision, optimizer, seed).</summary>
    public Tuners.RecipeSettings RecipeSettings => new()
    {
        LoraRank = LoraRank, LoraAlpha = LoraAlpha, LoraDropout = LoraDropout, LoraTarget = LoraTarget,
        Bf16 = Training.Bf16, Optim = Training.Optim, LoraPlusLrRatio = Training.LoraPlusLrRatio, Quantized = Quantization is not null,
        Seed = Training.Seed, Sets = KeysSet.Contains, Source = Source,
    };

    // The method checks its keys and what it cannot train with; without a method no method key applies.
    void CheckMethodKeys(Tuners.Recipe? recipe)
    {
        if (recipe is not null) recipe.Check(RecipeKeys, RecipeSettings);
        else Tuners.Recipe.RefuseKeys(MethodKeys.Keys, [], FinetuningType, Source);
    }

    /// <summary>A path from the config: as given when it exists from the working folder, else relative to the YAML file.</summary>
    public string ResolvePath(string path)
    {
        if (Path.IsPathRooted(path) || File.Exists(path) || Directory.Exists(path)) return path;
        var beside = Path.Combine(BaseDir, path);
        return File.Exists(beside) || Directory.Exists(beside) ? beside : path;
    }

    public DataOptions DataOptions(IReadOnlyDictionary<string, int>? labelMap) => new()
    {
        Format = DatasetFormat, CutoffLen = CutoffLen, TrainOnPrompt = TrainOnPrompt, Packing = Recipe.Packing,
        ValSize = ValSize, Seed = Training.Seed, Source = Source, LabelMap = labelMap, Stage = Recipe.Stage, MaskHistory = Recipe.MaskHistory,
        MaxSamples = Recipe.MaxSamples, MixStrategy = Recipe.MixStrategy, InterleaveProbs = Recipe.InterleaveProbs,
    };
}
