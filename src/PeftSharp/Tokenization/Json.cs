using System.Text.Json;

namespace PeftSharp.Tokenization;

/// <summary>Field access on tokenizer JSON files that fails with the file and the field's path.</summary>
internal static class Json
{
    public static bool IsNull(this JsonElement e) => e.ValueKind is JsonValueKind.Null or JsonValueKind.Undefined;

    public static JsonElement? Opt(this JsonElement e, string name) =>
        e.ValueKind == JsonValueKind.Object && e.TryGetProperty(name, out var v) && !v.IsNull() ? v : null;

    public static JsonElement Req(this JsonElement e, string name, string file, string where) =>
        e.Opt(name) ?? throw new PeftFormatException(file, $"missing field '{where}.{name}'");

    public static string Str(this JsonElement e, string name, string file, string where)
    {
        var v = e.Req(name, file, where);
        return v.ValueKind == JsonValueKind.String ? v.GetString()!
            : throw new PeftFormatException(file, $"field '{where}.{name}' must be a string, found {v.ValueKind}");
    }

    public static string? OptStr(this JsonElement e, string name) =>
        e.Opt(name) is { ValueKind: JsonValueKind.String } v ? v.GetString() : null;

    public static bool Bool(this JsonElement e, string name, bool fallback) =>
        e.Opt(name) is { } v && v.ValueKind is JsonValueKind.True or JsonValueKind.False ? v.GetBoolean() : fallback;

    public static int Int(this JsonElement e, string name, int fallback) =>
        e.Opt(name) is { ValueKind: JsonValueKind.Number } v ? v.GetInt32() : fallback;

    /// <summary>A Split/Replace pattern: <c>{"String": "…"}</c> or <c>{"Regex": "…"}</c>.</summary>
    public static (string text, bool isRegex) Pattern(this JsonElement e, string file, string where)
    {
        var p = e.Req("pattern", file, where);
        if (p.OptStr("String") is { } s) return (s, false);
        if (p.OptStr("Regex") is { } r) return (r, true);
        throw new PeftFormatException(file, $"field '{where}.pattern' must be {{\"String\": …}} or {{\"Regex\": …}}");
    }

    public static string Type(this JsonElement e, string file, string where) => e.Str("type", file, where);

    public static IEnumerable<JsonElement> Array(this JsonElement e, string name, string file, string where)
    {
        var v = e.Req(name, file, where);
        return v.ValueKind == JsonValueKind.Array ? v.EnumerateArray()
            : throw new PeftFormatException(file, $"field '{where}.{name}' must be an array, found {v.ValueKind}");
    }
}
