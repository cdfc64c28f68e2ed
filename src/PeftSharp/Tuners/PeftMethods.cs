using PeftSharp.IO;
using System.Text.Json;
using System.Text.Json.Nodes;
using PeftSharp.Models;

namespace PeftSharp.Tuners;

/// <summary>
/// One tuning method: how its config is parsed and how it changes a model. A method that replaces modules
/// leaves <see cref="IAdapterLayer"/> wrappers behind; <see cref="PeftModel"/> drives those generically.
/// </summary>
public interface IPeftMethod
{
    string PeftType { get; }

    PeftConfig ParseConfig(JsonObject json, string source);

    /// <summary>
    /// Resolves what depends on the model (default targets, "all-linear", forced flags, task heads) and returns
    /// the config as it will be stored and saved (peft mutates its config the same way).
    /// </summary>
    PeftConfig Prepare(PreTrainedModel model, PeftConfig config);

    /// <summary>Adds adapter <paramref name="adapterName"/> to the model's modules. Returns the wrapped module names.</summary>
    IReadOnlyList<string> Inject(PreTrainedModel model, PeftConfig config, string adapterName);

    /// <summary>
    /// Elements of the tensors one adapter of the prepared <paramref name="config"/> will hold on <paramref name="model"/>
    /// (its wrappers and prompt learner), computed from shapes without allocating: <see cref="PeftModel"/> checks it
    /// against <see cref="AdapterSize.Check"/> before <see cref="Inject"/>, so a hostile size is refused, not allocated.
    /// </summary>
    long AdapterElements(PreTrainedModel model, PeftConfig config);

    // ---- what the rest of the product asks a method (training, serving, inspect, bf16, bench); defaults in brackets ----

    /// <summary>The <c>finetuning_type</c> values of <c>peft train</c> that build this method's adapters [none].</summary>
    IReadOnlyList<Recipe> Recipes => Array.Empty<Recipe>();

    /// <summary>What its adapters support [merge, KV-cache generation; no mixed batches].</summary>
    MethodCapabilities Capabilities => MethodCapabilities.Default;

    /// <summary>How <c>inspect-adapter</c> describes one of its adapters [the peft_type].</summary>
    AdapterDescription Describe(PeftConfig config) => new(config.PeftType);

    /// <summary>The weight file of its adapter folders [adapter_model.safetensors].</summary>
    string WeightsFile => AdapterFiles.WeightsFile;

    /// <summary>Its rows of the methods benchmark [none].</summary>
    IReadOnlyList<BenchEntry> Bench => Array.Empty<BenchEntry>();
}

/// <summary>What a method's adapters support, asked by serving, merge and generation instead of checking config types.</summary>
public sealed record MethodCapabilities
{
    public static readonly MethodCapabilities Default = new();

    /// <summary>Rows of one batch may each use a different adapter of this method in one forward (peft's adapter_names): serving batches them together.</summary>
    public bool MixedBatch { get; init; }
    /// <summary>Its adapters fold into the base weights (merge, merge_and_unload, <c>peft merge</c>).</summary>
    public bool Merge { get; init; } = true;
    /// <summary>Decoding may feed only the new tokens with a KV cache (a forward hook can still refuse per adapter, see <see cref="IForwardHook.SupportsKVCache"/>).</summary>
    public bool KvCacheGeneration { get; init; } = true;
}

/// <summary>A method that combines adapters into a new one (peft's add_weighted_adapter).</summary>
public interface IWeightedCombination
{
    /// <summary>The combination_type values it accepts.</summary>
    IReadOnlyList<string> CombinationTypes { get; }

    void AddWeighted(PeftModel peft, IReadOnlyList<string> adapters, IReadOnlyList<double> weights, string newName, string combinationType, int? svdRank);
}

/// <summary>What <c>inspect-adapter</c> prints for an adapter's method: a name (with variant) and labelled lines; <see cref="Fields"/> for --json.</summary>
public sealed record AdapterDescription(string Method)
{
    public IReadOnlyList<(string Label, string Text)> Lines { get; init; } = Array.Empty<(string, string)>();
    /// <summary>The method's settings for --json (snake_case keys).</summary>
    public JsonObject Fields { get; init; } = new();
}

/// <summary>
/// One row of the methods benchmark (<c>bench methods</c>): built through the method's recipe like <c>peft train</c>
/// (its keys and settings given), trained with the recipe's hooks. <see cref="Create"/> and <see cref="Loss"/> are for
/// rows no single recipe builds (AdapterFusion's joint stage).
/// </summary>
public sealed record BenchEntry(string Name, string Family, double Lr)
{
    /// <summary>The finetuning_type; null: the method's first recipe.</summary>
    public string? Recipe { get; init; }
    /// <summary>The recipe's keys from (steps, layers).</summary>
    public Func<int, int, Dictionary<string, JsonNode?>>? Keys { get; init; }
    /// <summary>Changes to the benchmark's generic settings (LoRA r=8, alpha=16 on q/k/v/o).</summary>
    public Func<RecipeSettings, RecipeSettings>? Settings { get; init; }
    public Func<PreTrainedModel, PeftModel>? Create { get; init; }
    public Func<PeftModel, TorchSharp.torch.Tensor, TorchSharp.torch.Tensor>? Loss { get; init; }

    /// <summary>A name with " / " answers --only to each of its parts.</summary>
    public bool Answers(string only) =>
        Name.Equals(only, StringComparison.OrdinalIgnoreCase) || Name.Split(" / ").Any(n => n.Equals(only, StringComparison.OrdinalIgnoreCase));
}

/// <summary>A method that runs the model's forward itself (AdapterHub prefix tuning feeds it a seeded KV cache).</summary>
public interface IForwardHook
{
    ModelOutput Forward(PeftModel peft, ModelInputs inputs);

    /// <summary>Whether decoding may feed only new tokens with a KV cache (see <see cref="ILanguageModel.SupportsKVCache"/>).</summary>
    bool SupportsKVCache(PeftModel peft) => true;
}

/// <summary>A method whose adapter folders are not peft's (AdapterHub): <see cref="PeftModel"/> hands it the weight files.</summary>
public interface IAdapterFolderFormat
{
    void SaveWeights(PeftModel peft, string dir, string adapterName);
    void LoadWeights(PeftModel peft, string dir, string adapterName);
}

/// <summary>The peft_type → method registry (one line per method) and the adapter_config.json reader.</summary>
public static class PeftMethods
{
    static readonly Dictionary<string, IPeftMethod> Registry = new(StringComparer.Ordinal)
    {
        ["LORA"] = new Lora.LoraMethod(),
        ["DELTA_LORA"] = new DeltaLora.DeltaLoraMethod(),
        ["VERA"] = new Vera.VeraMethod(),
        ["ADALORA"] = new AdaLora.AdaLoraMethod(),
        ["PROMPT_TUNING"] = new PromptTuning.PromptTuningMethod(),
        ["P_TUNING"] = new PTuning.PTuningMethod(),
        ["PREFIX_TUNING"] = new PrefixTuning.PrefixTuningMethod(),
        ["ADAPTION_PROMPT"] = new AdaptionPrompt.AdaptionPromptMethod(),
        [AdapterHub.AdapterHubConfig.Type] = new AdapterHub.AdapterHubMethod(),
        [BitFit.BitFitConfig.Type] = new BitFit.BitFitMethod(),
        [IA3.IA3Config.Type] = new IA3.IA3Method(),
    };

    /// <summary>Where warnings go (unknown config keys, ...). Replace to route them to a logger.</summary>
    public static Action<string> Warn { get; set; } = m => Console.Error.WriteLine($"warning: {m}");

    public static IReadOnlyCollection<string> Supported => Registry.Keys;

    /// <summary>Every registered method, in registration order.</summary>
    public static IEnumerable<IPeftMethod> All => Registry.Values;

    /// <summary>Every finetuning_type with its method.</summary>
    public static IEnumerable<(Recipe Recipe, IPeftMethod Method)> Recipes => Registry.Values.SelectMany(m => m.Recipes.Select(r => (r, m)));

    /// <summary>The finetuning_type values the methods offer.</summary>
    public static IEnumerable<string> FinetuningTypes => Recipes.Select(r => r.Recipe.Name);

    /// <summary>Every method-specific recipe key.</summary>
    public static IEnumerable<string> RecipeKeyNames => Recipes.SelectMany(r => r.Recipe.Keys).Distinct();

    /// <summary>The finetuning_type <paramref name="name"/> and its method, or null.</summary>
    public static (Recipe Recipe, IPeftMethod Method)? FindRecipe(string name) =>
        Recipes.Where(r => r.Recipe.Name == name).Select(r => ((Recipe, IPeftMethod)?)r).FirstOrDefault();

    public static (Recipe Recipe, IPeftMethod Method) Recipe(string name) => FindRecipe(name)
        ?? throw new PeftConfigException($"finetuning_type '{name}' is not a method's (supported: {string.Join(", ", FinetuningTypes)})");

    public static IPeftMethod Get(string peftType) =>
        Registry.TryGetValue(peftType, out var m) ? m
        : throw new PeftConfigException($"peft_type '{peftType}' is not supported (supported: {string.Join(", ", Registry.Keys)})");

    public static IPeftMethod For(PeftConfig config) => Get(config.PeftType);

    /// <summary>Parses an adapter_config.json object, dispatching on peft_type.</summary>
    public static PeftConfig ParseConfig(JsonObject json, string source = AdapterFiles.ConfigFile)
    {
        if (AdapterHub.AdapterHubConfig.Recognizes(json)) return Get(AdapterHub.AdapterHubConfig.Type).ParseConfig(json, source);
        var type = json["peft_type"] is JsonValue v && v.TryGetValue<string>(out var s) ? s
            : throw new PeftConfigException($"{source}: missing 'peft_type' (the only required key; supported: {string.Join(", ", Registry.Keys)})");
        return Get(type).ParseConfig(json, source);
    }

    /// <summary>Reads <c>adapter_config.json</c> of an adapter folder.</summary>
    public static PeftConfig LoadConfig(string adapterDir)
    {
        adapterDir = HfHubCache.ResolveFolder(adapterDir, "adapter");
        var path = Path.Combine(adapterDir, AdapterFiles.ConfigFile);
        if (!File.Exists(path)) throw new PeftFormatException(adapterDir, $"no {AdapterFiles.ConfigFile} in the adapter folder");
        JsonObject json;
        try { json = JsonNode.Parse(File.ReadAllText(path)) as JsonObject ?? throw new PeftFormatException(path, "must be a JSON object"); }
        catch (JsonException e) { throw new PeftFormatException(path, $"not valid JSON ({e.Message})"); }
        return ParseConfig(json, path);
    }

    /// <summary>Reports keys a parser did not know (written by a newer peft): ignored with a warning, as peft does.</summary>
    internal static void WarnUnknown(ConfigReader r)
    {
        var unknown = r.UnreadKeys.ToList();
        if (unknown.Count > 0) Warn($"{r.Source}: ignoring unknown keys {string.Join(", ", unknown)}");
    }
}
