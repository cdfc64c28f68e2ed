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
        ["PROMPT_TUNING"] = new PromptTuning.PromptTuningMethod(),
        ["P_TUNING"] = new PTuning.PTuningMethod(),
        ["PREFIX_TUNING"] = new PrefixTuning.PrefixTuningMethod(),
        ["ADAPTION_PROMPT"] = new AdaptionPrompt.AdaptionPromptMethod(),
        [AdapterHub.AdapterHubConfig.Type] = new AdapterHub.AdapterHubMethod(),
        [BitFit.BitFitConfig.Type] = new BitFit.BitFitMethod(),
        ["VERA"] = new Vera.VeraMethod(),
        ["ADALORA"] = new AdaLora.AdaLoraMethod(),
        ["DELTA_LORA"] = new DeltaLora.DeltaLoraMethod(),
    };

    /// <summary>Where warnings go (unknown config keys, ...). Replace to route them to a logger.</summary>
    public static Action<string> Warn { get; set; } = m => Console.Error.WriteLine($"warning: {m}");

    public static IReadOnlyCollection<string> Supported => Registry.Keys;

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
