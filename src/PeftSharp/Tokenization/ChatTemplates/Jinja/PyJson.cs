using System.Text;

namespace PeftSharp.Tokenization.ChatTemplates.Jinja;

/// <summary>Python's json.dumps, which HF's tojson filter calls (ensure_ascii=False unless asked).</summary>
internal static class PyJson
{
    public static string Dumps(object? value, bool ensureAscii, string? indent, string? itemSep, string? keySep, bool sortKeys)
    {
        itemSep ??= indent is null ? ", " : ",";
        keySep ??= ": ";
        var sb = new StringBuilder();
        Write(sb, value, 0, ensureAscii, indent, itemSep, keySep, sortKeys);
        return sb.ToString();
    }

    private static void Write(StringBuilder sb, object? v, int level, bool ascii, string? indent, string itemSep, string keySep, bool sortKeys)
    {
        switch (v)
        {
            case null: sb.Append("null"); return;
            case bool b: sb.Append(b ? "true" : "false"); return;
            case long l: sb.Append(Py.Str(l)); return;
            case double d: sb.Append(Float(d)); return;
            case string s: WriteString(sb, s, ascii); return;
            case List<object?> list:
                WriteSeq(sb, '[', ']', list.Count, level, indent, itemSep, i =>
                    Write(sb, list[i], level + 1, ascii, indent, itemSep, keySep, sortKeys));
                return;
            case PyDict dict:
            {
                var pairs = dict.Select(kv => (Key: Key(kv.Key), kv.Value)).ToList();
                if (sortKeys) pairs = pairs.OrderBy(p => p.Key, Comparer<string>.Create(Py.CompareCodePoints)).ToList();
                WriteSeq(sb, '{', '}', pairs.Count, level, indent, itemSep, i =>
                {
                    WriteString(sb, pairs[i].Key, ascii);
                    sb.Append(keySep);
                    Write(sb, pairs[i].Value, level + 1, ascii, indent, itemSep, keySep, sortKeys);
                });
                return;
            }
        }
        throw new JinjaError($"Object of type {Py.TypeName(v)} is not JSON serializable");
    }

    private static void WriteSeq(StringBuilder sb, char open, char close, int count, int level, string? indent, string itemSep, Action<int> item)
    {
        sb.Append(open);
        if (count == 0) { sb.Append(close); return; }
        string? inner = indent is null ? null : "\n" + string.Concat(Enumerable.Repeat(indent, level + 1));
        for (int i = 0; i < count; i++)
        {
            if (i > 0) sb.Append(itemSep);
            if (inner is not null) sb.Append(inner);
            item(i);
        }
        if (indent is not null) sb.Append('\n').Append(string.Concat(Enumerable.Repeat(indent, level)));
        sb.Append(close);
    }

    private static string Key(object key) => key switch
    {
        string s => s,
        bool b => b ? "true" : "false",
        long l => Py.Str(l),
        double d => Float(d),
        _ => throw new JinjaError($"keys must be str, int, float, bool or None, not {Py.TypeName(key)}"),
    };

    private static string Float(double d) =>
        double.IsNaN(d) ? "NaN" : double.IsPositiveInfinity(d) ? "Infinity" : double.IsNegativeInfinity(d) ? "-Infinity" : Py.FloatRepr(d);

    private static void WriteString(StringBuilder sb, string s, bool ascii)
    {
        sb.Append('"');
        foreach (var c in s)
        {
            switch (c)
            {
                case '"': sb.Append("\\\""); break;
                case '\\': sb.Append("\\\\"); break;
                case '\n': sb.Append("\\n"); break;
                case '\r': sb.Append("\\r"); break;
                case '\t': sb.Append("\\t"); break;
                case '\b': sb.Append("\\b"); break;
                case '\f': sb.Append("\\f"); break;
                default:
                    // UTF-16 code units are exactly the \uXXXX (surrogate pair) units Python writes.
                    if (c < 0x20 || (ascii && c > 0x7e)) sb.Append($"\\u{(int)c:x4}");
                    else sb.Append(c);
                    break;
            }
        }
        sb.Append('"');
    }
}
