using System.Globalization;
using System.Text.Json;
using System.Text.Json.Nodes;
using PeftSharp.Models;

namespace PeftSharp.Tuners;

/// <summary>
/// A method's own keys of a training recipe (a `peft train` YAML), as the JSON values an adapter config reads, with
/// readers whose errors name the file and the key. The recipe passes every method key it sets; each method reads its own.
/// </summary>
public sealed class RecipeKeys
{
    public static readonly RecipeKeys Empty = new(new Dictionary<string, JsonNode?>(), "recipe");

    public RecipeKeys(IReadOnlyDictionary<string, JsonNode?> values, string source)
    {
        Values = values;
        Source = source;
    }

    public IReadOnlyDictionary<string, JsonNode?> Values { get; }
    public string Source { get; }

    public bool Has(string key) => Values.TryGetValue(key, out var v) && v is not null;

    public JsonNode? this[string key] => Values.TryGetValue(key, out var v) ? v : null;

    PeftConfigException Bad(string key, string expected) =>
        new($"{Source}: '{key}' is '{Text(Values[key])}'; expected {expected}");

    static string Text(JsonNode? n) => n is JsonValue v && v.TryGetValue<string>(out var s) ? s : n?.ToJsonString() ?? "null";

    public string? String(string key) => Has(key) ? Text(Values[key]) : null;

    public double Double(string key, double fallback)
    {
        if (!Has(key)) return fallback;
        return double.TryParse(Text(Values[key]), NumberStyles.Float, CultureInfo.InvariantCulture, out var d) && double.IsFinite(d) ? d : throw Bad(key, "a finite number");
    }

    public long Long(string key, long fallback)
    {
        if (!Has(key)) return fallback;
        return long.TryParse(Text(Values[key]), NumberStyles.Integer, CultureInfo.InvariantCulture, out var l) ? l : throw Bad(key, "an integer");
    }

    public int Int(string key, int fallback)
    {
        var l = Long(key, fallback);
        return l is >= int.MinValue and <= int.MaxValue ? (int)l : throw Bad(key, "an integer");
    }

    public int? OptInt(string key) => Has(key) ? Int(key, 0) : null;

    /// <summary>Module names: a YAML list, or one string of comma-separated names; null when not set.</summary>
    public IReadOnlyList<string>? Names(string key)
    {
        if (!Has(key)) return null;
        var names = Values[key] is JsonArray a
            ? a.Select(n => n is JsonValue v && v.TryGetValue<string>(out var s) ? s.Trim() : throw Bad(key, "module names (a list or comma-separated)")).ToList()
            : Text(Values[key]).Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries).ToList();
        return names.Count > 0 && names.All(n => n.Length > 0) ? names : throw Bad(key, "module names (a list or comma-separated)");
    }

    public bool Bool(string key, bool fallback)
    {
        if (!Has(key)) return fallback;
        var n = Values[key]!;
        if (n is JsonValue v && (v.GetValueKind() is JsonValueKind.True or JsonValueKind.False)) return v.GetValue<bool>();
        return Text(n).ToLowerInvariant() switch { "true" or "yes" or "1" => true, "false" or "no" or "0" => false, _ => throw Bad(key, "true or false") };
    }
}

/// <summary>
/// The generic recipe settings a method may read besides its own keys: LLaMA-Factory's LoRA arguments (lora_rank,
/// lora_alpha, lora_dropout, lora_target, shared by the LoRA family) and the run facts a method's checks need.
/// </summary>
public sealed record RecipeSettings
{
    public int LoraRank { get; init; } = 8;
    public double? LoraAlpha { get; init; }
    public double LoraDropout { get; init; }
    /// <summary>Module names (comma separated) or "all" (every linear layer but the output head).</summary>
    public string LoraTarget { get; init; } = "all";
    public bool Bf16 { get; init; }
    public string Optim { get; init; } = "adamw_torch";
    public double? LoraPlusLrRatio { get; init; }
    public bool Quantized { get; init; }
    public int Seed { get; init; } = 42;
    /// <summary>Whether the recipe file sets a key (generic or the method's).</summary>
    public Func<string, bool> Sets { get; init; } = _ => false;
    /// <summary>The recipe file, for messages.</summary>
    public string Source { get; init; } = "recipe";

    /// <summary>
    /// lora_target as target_modules: module names, or "all" as LLaMA-Factory's find_all_linear_modules expands it: the
    /// short names of every linear layer but the output head, which is what it hands peft and so what adapter_config.json holds.
    /// </summary>
    public StringOrList LoraTargets(PreTrainedModel model)
    {
        var names = LoraTarget.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
        if (names is not ["all"]) return StringOrList.Of(names);
        var linear = TargetMatcher.ExpandAllLinear(model, model.IsCausalLM ? "CAUSAL_LM" : "SEQ_CLS");
        return StringOrList.Of(linear.Select(n => n[(n.LastIndexOf('.') + 1)..]).Distinct().ToList());
    }
}

/// <summary>What building a run's adapter knows: the model, its folder, the recipe's keys and settings, the run's length.</summary>
public sealed record RecipeContext
{
    public required PreTrainedModel Model { get; init; }
    /// <summary>Written to the config as base_model_name_or_path.</summary>
    public string? ModelDir { get; init; }
    public RecipeKeys Keys { get; init; } = RecipeKeys.Empty;
    public RecipeSettings Settings { get; init; } = new();
    /// <summary>The run's optimizer steps (AdaLoRA's total_step when the recipe gives none).</summary>
    public int TotalSteps { get; init; }
    /// <summary>Resolves a path named in the recipe (relative to the recipe file when not found from the working folder).</summary>
    public Func<string, string> ResolvePath { get; init; } = p => p;

    public string TaskType => Model.IsCausalLM ? "CAUSAL_LM" : "SEQ_CLS";
}

/// <summary>
/// One <c>finetuning_type</c> of <c>peft train</c>, declared by the method it builds (LoRA declares lora and lora_fa,
/// Prefix Tuning prefix_tuning and p_tuning_v2, ...): the keys it reads, its checks, the adapter config it builds,
/// the training hooks its method needs, and what it supports.
/// </summary>
public sealed record Recipe(string Name)
{
    /// <summary>The method-specific keys this finetuning_type reads (a key set for another type is refused).</summary>
    public IReadOnlyList<string> Keys { get; init; } = Array.Empty<string>();

    /// <summary>Checks at parse time (values, keys that make no sense for this type); throws naming the key.</summary>
    public Action<RecipeKeys, RecipeSettings>? Validate { get; init; }

    /// <summary>The new adapter's config (validated).</summary>
    public required Func<RecipeContext, PeftConfig> Config { get; init; }

    /// <summary>Builds the trainable PeftModel itself instead of PeftModel.Create(Config) (AdapterFusion's stage); null: the default.</summary>
    public Func<RecipeContext, PeftModel?>? Create { get; init; }

    /// <summary>Whether adapter_name_or_path may name an adapter of this config for this type (default: the method's peft_type).</summary>
    public Func<PeftConfig, bool>? Continues { get; init; }

    /// <summary>Why an existing adapter cannot be continued at all (AdaLoRA's budget schedule); null: it can.</summary>
    public string? CannotContinue { get; init; }

    /// <summary>The method's training hooks over the PeftModel being trained.</summary>
    public Func<PeftModel, RecipeKeys, RecipeSettings, MethodHooks>? Hooks { get; init; }

    /// <summary>Whether it trains over a 4-bit (QLoRA) base (its layers wrap <c>Linear4bit</c>).</summary>
    public bool QuantizedBase { get; init; }

    /// <summary>Why bf16 cannot be used with it; null: it can.</summary>
    public string? NoBf16 { get; init; }

    /// <summary>Whether adapter_name_or_path may name an adapter with <paramref name="config"/> for this type.</summary>
    public bool CanContinue(IPeftMethod method, PeftConfig config) =>
        CannotContinue is null && (Continues?.Invoke(config) ?? config.PeftType == method.PeftType);

    /// <summary>
    /// The PeftModel a run trains: an existing adapter folder made trainable (its type must be one this finetuning_type
    /// continues), or a new adapter from the recipe.
    /// </summary>
    public PeftModel CreateModel(IPeftMethod method, RecipeContext ctx, string? adapterDir)
    {
        if (adapterDir is null) return Create?.Invoke(ctx) ?? PeftModel.Create(ctx.Model, Config(ctx));
        var config = PeftMethods.LoadConfig(adapterDir);
        if (CannotContinue is { } why && config.PeftType == method.PeftType) throw new PeftConfigException($"adapter_name_or_path '{adapterDir}': {why}");
        if (!CanContinue(method, config))
        {
            var fits = PeftMethods.Recipes.Where(r => r.Recipe.CanContinue(r.Method, config)).Select(r => r.Recipe.Name).ToList();
            var hint = fits.Count > 0 ? string.Join(" or ", fits) : "the finetuning_type of that method";
            throw new PeftConfigException($"adapter_name_or_path '{adapterDir}' is a {config.PeftType} adapter; finetuning_type '{Name}' cannot continue it (use {hint})");
        }
        return PeftModel.FromPretrained(ctx.Model, adapterDir, isTrainable: true);
    }

    /// <summary>The hooks of this type over <paramref name="peft"/> (none when it declares none).</summary>
    public MethodHooks HooksFor(PeftModel peft, RecipeKeys keys, RecipeSettings settings) => Hooks?.Invoke(peft, keys, settings) ?? MethodHooks.None;

    /// <summary>Refuses a method key that finetuning_type <paramref name="type"/> does not read, naming the types that do.</summary>
    public static void RefuseKeys(IEnumerable<string> keys, IReadOnlyList<string> allowed, string type, string source)
    {
        foreach (var key in keys.Where(k => !allowed.Contains(k)))
        {
            var types = PeftMethods.Recipes.Where(r => r.Recipe.Keys.Contains(key)).Select(r => r.Recipe.Name);
            throw new PeftConfigException($"{source}: '{key}' applies to finetuning_type {string.Join(" | ", types)}, not '{type}'");
        }
    }

    /// <summary>
    /// Parse-time checks of a recipe that chose this type: a method key this type does not read, its own checks (values,
    /// generic keys that make no sense for it), then the base and precision it cannot train with.
    /// </summary>
    public void Check(RecipeKeys keys, RecipeSettings settings)
    {
        RefuseKeys(keys.Values.Keys, Keys, Name, settings.Source);
        Validate?.Invoke(keys, settings);
        if (settings.Quantized && !QuantizedBase)
            throw new PeftConfigException($"{settings.Source}: quantization_bit supports finetuning_type {string.Join(" | ", PeftMethods.Recipes.Where(r => r.Recipe.QuantizedBase).Select(r => r.Recipe.Name))}, not '{Name}' (its layers wrap full-precision Linear layers)");
        if (settings.Bf16 && NoBf16 is { } why) throw new PeftConfigException($"{settings.Source}: bf16 cannot be used with finetuning_type {Name}: {why}");
    }
}
