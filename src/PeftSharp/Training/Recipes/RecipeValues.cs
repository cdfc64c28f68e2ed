using System.Globalization;
using YamlDotNet.RepresentationModel;

namespace PeftSharp.Training.Recipes;

/// <summary>
/// The key/value pairs of a training YAML after <c>key=value</c> overrides (as <c>llamafactory-cli train x.yaml
/// key=value</c> merges them with OmegaConf), with typed accessors whose errors name the file, key and line.
/// </summary>
public sealed class RecipeValues
{
    readonly Dictionary<string, YamlNode> _values = new();
    readonly Dictionary<string, string> _where = new();

    public string Source { get; }
    /// <summary>One line per ignored key that was set (see <see cref="RecipeKeys"/>).</summary>
    public IReadOnlyList<string> Warnings { get; private set; } = [];

    RecipeValues(string source) { Source = source; }

    public static RecipeValues Read(string yaml, string source, IReadOnlyList<string>? overrides = null)
    {
        var r = new RecipeValues(source);
        var root = LoadMapping(yaml, source);
        foreach (var (k, v) in root.Children)
        {
            var key = PeftSharp.IO.YamlGuard.Scalar(k, source, "a key") ?? "";
            if (r._values.ContainsKey(key))
                throw new PeftConfigException($"{source}: key '{key}' appears twice (line {k.Start.Line})");
            r._values[key] = v; r._where[key] = $"line {k.Start.Line}";
        }
        foreach (var o in overrides ?? [])
        {
            int eq = o.IndexOf('=');
            if (eq <= 0) throw new PeftConfigException($"override '{o}': expected key=value (as llamafactory-cli train x.yaml key=value)");
            var key = o[..eq].Trim();
            var node = LoadMapping($"v: {(o[(eq + 1)..].Length == 0 ? "null" : o[(eq + 1)..])}", $"override '{o}'").Children[new YamlScalarNode("v")];
            r._values[key] = node; r._where[key] = $"override {key}=";
        }
        r.Warnings = RecipeKeys.Check(r._values.Keys.Select(k => (k, r.Str(k), r._where[k])).ToList(), source);
        return r;
    }

    static YamlMappingNode LoadMapping(string yaml, string source)
    {
        var stream = PeftSharp.IO.YamlGuard.Load(yaml, source);
        if (stream.Documents.Count == 0 || stream.Documents[0].RootNode is not YamlMappingNode root)
            throw new PeftFormatException(source, "expected a mapping of key: value");
        return root;
    }

    public bool Contains(string key) => _values.ContainsKey(key);
    public IEnumerable<string> Keys => _values.Keys;
    public YamlNode Node(string key) => _values[key];
    public string Where(string key) => _where.TryGetValue(key, out var w) ? w : "default";

    PeftConfigException Bad(string key, string value, string expected) =>
        new($"{Source}: '{key}' is '{value.ReplaceLineEndings("\\n")}'; expected {expected} ({Where(key)})");

    /// <summary>A scalar as its text (null for null/~/empty), a list as comma-joined text.</summary>
    public string? Str(string key)
    {
        if (!_values.TryGetValue(key, out var node)) return null;
        return node switch
        {
            YamlScalarNode s => s.Value is null or "" or "null" or "~" ? null : s.Value,
            YamlSequenceNode seq => string.Join(",", seq.Children.Select(c => PeftSharp.IO.YamlGuard.Scalar(c, Source, $"each item of '{key}'"))),
            YamlMappingNode => "{" + string.Join(", ", ((YamlMappingNode)node).Children.Select(kv => $"{kv.Key}: {kv.Value}")) + "}",
            _ => throw new PeftConfigException($"{Source}: '{key}' ({Where(key)}) must be a value or a list"),
        };
    }

    T Get<T>(string key, T fallback, Func<string, T?> parse, string expected)
    {
        var s = Str(key);
        if (s is null) return fallback;
        return parse(s) is { } v ? v : throw Bad(key, s, expected);
    }

    public int Int(string key, int fallback) =>
        Get<int?>(key, fallback, s => int.TryParse(s, NumberStyles.Integer, CultureInfo.InvariantCulture, out var v) ? v : null, "an integer")!.Value;
    public int? OptInt(string key) => Str(key) is null ? null : Int(key, 0);
    public double Dbl(string key, double fallback) =>
        Get<double?>(key, fallback, s => double.TryParse(s, NumberStyles.Float, CultureInfo.InvariantCulture, out var v) ? v : null, "a number")!.Value;
    public double? OptDbl(string key) => Str(key) is null ? null : Dbl(key, 0);
    public bool Bool(string key, bool fallback) => Get<bool?>(key, fallback, s => s.ToLowerInvariant() switch
    {
        "true" or "yes" or "1" => true, "false" or "no" or "0" => false, _ => null,
    }, "true or false")!.Value;
    public bool? OptBool(string key) => Str(key) is null ? null : Bool(key, false);
    public string Required(string key) => Str(key) ?? throw new PeftConfigException($"{Source}: missing required key '{key}'");

    /// <summary>One of <paramref name="choices"/> (or the fallback when unset).</summary>
    public string Choice(string key, string fallback, params string[] choices)
    {
        var s = Str(key) ?? fallback;
        return choices.Contains(s) ? s : throw Bad(key, s, "one of " + string.Join(", ", choices));
    }

    /// <summary>A mapping of numbers (lr_scheduler_kwargs): YAML mapping or a JSON/flow string like {"min_lr": 1e-6}.</summary>
    public IReadOnlyDictionary<string, double> NumberMap(string key)
    {
        if (!_values.TryGetValue(key, out var node)) return new Dictionary<string, double>();
        if (node is YamlScalarNode { Value: { } text } && text.TrimStart().StartsWith('{'))
            node = LoadMapping("v: " + text, $"{Source}: '{key}'").Children[new YamlScalarNode("v")];
        if (node is YamlScalarNode s && (s.Value is null or "" or "null" or "~")) return new Dictionary<string, double>();
        if (node is not YamlMappingNode map) throw Bad(key, Str(key) ?? "", "a mapping of name: number");
        var result = new Dictionary<string, double>();
        foreach (var (k, v) in map.Children)
        {
            var name = PeftSharp.IO.YamlGuard.Scalar(k, Source, $"a key of '{key}'") ?? "";
            if (v is not YamlScalarNode { Value: { } vs } || !double.TryParse(vs, NumberStyles.Float, CultureInfo.InvariantCulture, out var d))
                throw Bad(key, $"{name}: {v}", "numbers as values");
            result[name] = d;
        }
        return result;
    }
}
