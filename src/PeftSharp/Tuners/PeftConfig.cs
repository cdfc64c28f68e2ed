using System.Text.Json;
using System.Text.Json.Nodes;

namespace PeftSharp.Tuners;

/// <summary>
/// Fields every peft <c>adapter_config.json</c> has (peft's <c>PeftConfigMixin</c>/<c>PeftConfig</c>). A method's
/// config derives from it, keeps HF's field names and defaults, and writes the full key set peft 0.20 writes.
/// </summary>
public abstract record PeftConfig
{
    /// <summary>peft's <c>peft_type</c> string ("LORA", ...).</summary>
    public abstract string PeftType { get; }
    /// <summary>CAUSAL_LM, SEQ_CLS, ... or null.</summary>
    public string? TaskType { get; init; }
    public string? BaseModelNameOrPath { get; init; }
    public bool InferenceMode { get; init; }
    public string? Revision { get; init; }
    /// <summary>The peft version that wrote the file; new configs write the format version PeftSharp follows.</summary>
    public string PeftVersion { get; init; } = FormatVersion;
    /// <summary>peft's auto_mapping (written when task_type is null).</summary>
    public JsonNode? AutoMapping { get; init; }

    /// <summary>The adapter_config.json layout PeftSharp reads and writes.</summary>
    public const string FormatVersion = "0.20.0";

    /// <summary>Method-specific keys; <see cref="ToJson"/> adds the common ones and sorts (peft writes sort_keys=True).</summary>
    protected abstract void WriteFields(JsonObject o);

    /// <summary>The adapter_config.json object (a method with another file layout, AdapterHub, overrides it).</summary>
    public virtual JsonObject ToJson()
    {
        var o = new JsonObject
        {
            ["auto_mapping"] = AutoMapping?.DeepClone(),
            ["base_model_name_or_path"] = BaseModelNameOrPath,
            ["inference_mode"] = InferenceMode,
            ["peft_type"] = PeftType,
            ["peft_version"] = PeftVersion,
            ["revision"] = Revision,
            ["task_type"] = TaskType,
        };
        WriteFields(o);
        var sorted = new JsonObject();
        foreach (var kv in o.OrderBy(kv => kv.Key, StringComparer.Ordinal)) sorted[kv.Key] = kv.Value?.DeepClone();
        return sorted;
    }

    public string ToJsonString() => ToJson().ToJsonString(new JsonSerializerOptions { WriteIndented = true });

    /// <summary>Reads the common keys into a new config (used by each method's parser).</summary>
    protected static T ReadCommon<T>(T config, ConfigReader r) where T : PeftConfig
    {
        r.Accept("peft_type");
        return config with
        {
        TaskType = r.String("task_type"),
        BaseModelNameOrPath = r.String("base_model_name_or_path"),
        InferenceMode = r.Bool("inference_mode", false),
        Revision = r.String("revision"),
        PeftVersion = r.String("peft_version") ?? FormatVersion,
        AutoMapping = r.Node("auto_mapping"),
        };
    }

    /// <summary>Writes <c>adapter_config.json</c> in <paramref name="dir"/> as peft does (inference_mode true).</summary>
    public void Save(string dir)
    {
        Directory.CreateDirectory(dir);
        var json = (this with { InferenceMode = true }).ToJsonString();
        IO.AtomicFile.WriteAllText(Path.Combine(dir, AdapterFiles.ConfigFile), json + "\n");
    }
}

/// <summary>File names of a peft adapter folder.</summary>
public static class AdapterFiles
{
    public const string ConfigFile = "adapter_config.json";
    public const string WeightsFile = "adapter_model.safetensors";
    public const string PickleWeightsFile = "adapter_model.bin";
}

/// <summary>
/// Typed access to a JSON object with error messages naming the file and field. Keys that were never read are
/// reported by <see cref="UnreadKeys"/> so a parser can warn about them (peft drops unknown keys with a warning).
/// </summary>
public sealed class ConfigReader
{
    readonly JsonObject _o;
    readonly HashSet<string> _read = new();
    public string Source { get; }

    public ConfigReader(JsonObject o, string source) { _o = o; Source = source; }

    public bool Has(string key) { _read.Add(key); return _o[key] is not null; }

    public JsonNode? Node(string key) { _read.Add(key); return _o[key]?.DeepClone(); }

    /// <summary>Marks keys as known without interpreting them (peft fields with no effect here).</summary>
    public void Accept(params string[] keys) { foreach (var k in keys) _read.Add(k); }

    public IEnumerable<string> UnreadKeys => _o.Select(kv => kv.Key).Where(k => !_read.Contains(k));

    PeftConfigException Bad(string key, string expected) =>
        new($"{Source}: field '{key}' must be {expected}; found {_o[key]?.ToJsonString() ?? "null"}");

    public string? String(string key)
    {
        _read.Add(key);
        var n = _o[key];
        if (n is null) return null;
        return n is JsonValue v && v.TryGetValue<string>(out var s) ? s : throw Bad(key, "a string or null");
    }

    public bool Bool(string key, bool fallback)
    {
        _read.Add(key);
        var n = _o[key];
        if (n is null) return fallback;
        return n is JsonValue v && v.TryGetValue<bool>(out var b) ? b : throw Bad(key, "true or false");
    }

    public double Double(string key, double fallback)
    {
        _read.Add(key);
        var n = _o[key];
        if (n is null) return fallback;
        if (n is JsonValue v && v.GetValueKind() == JsonValueKind.Number && v.TryGetValue<double>(out var d) && double.IsFinite(d)) return d;
        throw Bad(key, "a finite number");
    }

    /// <summary>An integer exactly representable in a double (±2^53), e.g. a seed.</summary>
    public long Long(string key, long fallback)
    {
        var d = Double(key, fallback);
        return d == Math.Floor(d) && Math.Abs(d) <= 1L << 53 ? (long)d : throw Bad(key, "an integer (at most 2^53 in magnitude)");
    }

    /// <summary>A number in [min, max] (a hostile value is refused here, before the adapter allocates anything).</summary>
    public double Double(string key, double fallback, double min, double max)
    {
        var d = Double(key, fallback);
        return d >= min && d <= max ? d : throw Bad(key, $"a number in [{min}, {max}]");
    }

    /// <summary>An integer in [min, max] (sizes an adapter allocates: checked before anything is).</summary>
    public int Int(string key, int fallback, int min, int max)
    {
        var i = Int(key, fallback);
        return i >= min && i <= max ? i : throw Bad(key, $"an integer in {min}..{max}");
    }

    public int Int(string key, int fallback)
    {
        var d = Double(key, fallback);
        if (d != Math.Floor(d) || d < int.MinValue || d > int.MaxValue) throw Bad(key, "an integer in 32-bit range");
        return (int)d;
    }

    /// <summary>A string, a list of strings, or null (peft's <c>Optional[Union[list[str], str]]</c>).</summary>
    public StringOrList? StringOrList(string key)
    {
        _read.Add(key);
        var n = _o[key];
        switch (n)
        {
            case null: return null;
            case JsonValue v when v.TryGetValue<string>(out var s): return Tuners.StringOrList.Of(s);
            case JsonArray a:
                return Tuners.StringOrList.Of(a.Select(x => x is JsonValue xv && xv.TryGetValue<string>(out var xs) ? xs : throw Bad(key, "a string or a list of strings")));
            default: throw Bad(key, "a string or a list of strings");
        }
    }

    /// <summary>An int, a list of ints, or null.</summary>
    public int[]? IntOrList(string key)
    {
        _read.Add(key);
        var n = _o[key];
        switch (n)
        {
            case null: return null;
            case JsonValue v when v.TryGetValue<int>(out var i): return new[] { i };
            case JsonArray a: return a.Select(x => x is JsonValue xv && xv.TryGetValue<int>(out var xi) ? xi : throw Bad(key, "an integer or a list of integers")).ToArray();
            default: throw Bad(key, "an integer or a list of integers");
        }
    }

    /// <summary>A {string: number} object (rank_pattern, alpha_pattern), keeping the file's key order.</summary>
    public IReadOnlyList<KeyValuePair<string, double>> NumberMap(string key)
    {
        _read.Add(key);
        var n = _o[key];
        if (n is null) return Array.Empty<KeyValuePair<string, double>>();
        if (n is not JsonObject obj) throw Bad(key, "an object of numbers");
        return obj.Select(kv => new KeyValuePair<string, double>(kv.Key,
            kv.Value is JsonValue v && v.GetValueKind() == JsonValueKind.Number && v.TryGetValue<double>(out var d) && double.IsFinite(d) ? d
            : throw Bad(key, "an object of finite numbers"))).ToList();
    }
}

/// <summary>
/// peft's "string or list" fields (target_modules, exclude_modules, layers_pattern): a string is a regex that must
/// match the whole module name, a list holds names matched exactly or as a '.'-suffix.
/// </summary>
public sealed record StringOrList
{
    public string? Pattern { get; private init; }
    public IReadOnlyList<string>? Items { get; private init; }

    public bool IsString => Pattern is not null;

    public static StringOrList Of(string pattern) => new() { Pattern = pattern };
    public static StringOrList Of(IEnumerable<string> items) => new() { Items = items.ToList() };
    public static StringOrList Of(params string[] items) => Of((IEnumerable<string>)items);

    public JsonNode ToJson() => Pattern is not null ? JsonValue.Create(Pattern) : new JsonArray(Items!.Select(i => (JsonNode?)JsonValue.Create(i)).ToArray());

    public override string ToString() => Pattern ?? "[" + string.Join(", ", Items!) + "]";

    public bool Equals(StringOrList? other) =>
        other is not null && Pattern == other.Pattern &&
        (Items is null ? other.Items is null : other.Items is not null && Items.SequenceEqual(other.Items));

    public override int GetHashCode() => Pattern?.GetHashCode() ?? Items!.Count;
}
