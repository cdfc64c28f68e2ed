using System.Globalization;
using System.Numerics;
using System.Text;

namespace PeftSharp.Tokenization.ChatTemplates.Jinja;

/// <summary>Jinja2's built-in filters (with HF's tojson), with Jinja's argument names and Python semantics.</summary>
internal static class Filters
{
    private static readonly HashSet<string> Unsupported = new()
    {
        "batch", "slice", "groupby", "center", "filesizeformat", "forceescape", "pprint", "random", "striptags",
        "urlencode", "urlize", "wordwrap", "xmlattr", "truncate", "wordcount",
    };

    public static object? Apply(Interpreter it, string name, object? v, Args a)
    {
        object? result = name switch
        {
            "abs" => v switch
            {
                long l => (object)checked(Math.Abs(l)), double d => Math.Abs(d), bool b => b ? 1L : 0L,
                _ => throw new JinjaError($"bad operand type for abs(): '{Py.TypeName(v)}'"),
            },
            // Jinja's attr filter looks up attributes only, never dict keys.
            "attr" => v is PyDict ? Methods.Lookup(v, Py.Str(a.Required(0, "name"))) ?? new Undefined("'dict object' has no attribute")
                : Interpreter.GetAttr(v, Py.Str(a.Required(0, "name"))),
            "capitalize" => Capitalize(Py.Str(v)),
            "count" or "length" => Py.Len(v),
            "default" or "d" => v is Undefined || (Py.Truthy(a.Get(1, "boolean", false)) && !Py.Truthy(v))
                ? a.Get(0, "default_value", "") : v,
            "dictsort" => DictSort(v, a),
            "escape" or "e" => Escape(Py.Str(v)),
            "first" => Py.Iterate(v).Take(1).ToList() is [var f] ? f : new Undefined("No first item, sequence was empty."),
            "last" => Py.ToList(v) is { Count: > 0 } lst ? lst[^1] : new Undefined("No last item, sequence was empty."),
            "float" => ToFloat(v, a.Get(0, "default", 0.0)),
            "format" => Format.Percent(Py.Str(v), new PyTuple(a.Positional)),
            "indent" => Indent(Py.Str(v), a.Get(0, "width", 4L), Py.Truthy(a.Get(1, "first", false)), Py.Truthy(a.Get(2, "blank", false))),
            "int" => ToInt(v, a.Get(0, "default", 0L), a.Get(1, "base", 10L)),
            "items" => v is Undefined ? new List<object?>()
                : v is PyDict d ? d.Select(kv => (object?)new PyTuple([kv.Key, kv.Value])).ToList()
                : throw new JinjaError($"the 'items' filter needs a mapping, got {Py.TypeName(v)}"),
            "join" => Join(v, a),
            "list" => Py.ToList(v),
            "lower" => Py.Str(v).ToLowerInvariant(),
            "upper" => Py.Str(v).ToUpperInvariant(),
            "map" => Map(it, v, a),
            "max" or "min" => MinMax(v, a, name == "max"),
            "reject" or "select" => SelectReject(it, v, a, attr: false, keep: name == "select"),
            "rejectattr" or "selectattr" => SelectReject(it, v, a, attr: true, keep: name == "selectattr"),
            "replace" => Methods.Replace(Py.Str(v), Py.Str(a.Required(0, "old")), Py.Str(a.Required(1, "new")),
                a.Get(2, "count") is { } c ? Py.ToLong(c) : -1),
            "reverse" => v is string s ? string.Concat(Enumerable.Reverse(Py.CodePoints(s)))
                : Enumerable.Reverse(Py.ToList(v)).ToList(),
            "round" => Round(v, Py.ToLong(a.Get(0, "precision", 0L)), Py.Str(a.Get(1, "method", "common"))),
            "safe" or "string" => Py.Str(v),
            "sort" => Sort(v, a),
            "sum" => Sum(v, a),
            "title" => Title(Py.Str(v)),
            "tojson" => ToJson(v, a),
            "trim" => Py.Strip(Py.Str(v), a.Get(0, "chars") is string ch ? ch : null, true, true),
            "unique" => Unique(v, a),
            _ => Unsupported.Contains(name)
                ? throw new JinjaError($"the filter '{name}' is not supported in chat templates")
                : throw new JinjaError($"no filter named '{name}'"),
        };
        a.Done(name switch { "format" => int.MaxValue, "map" or "select" or "reject" or "selectattr" or "rejectattr" => int.MaxValue, _ => 4 });
        return result;
    }

    private static string Capitalize(string s)
    {
        if (s.Length == 0) return s;
        var cps = Py.CodePoints(s);
        return cps[0].ToUpperInvariant() + string.Concat(cps.Skip(1)).ToLowerInvariant();
    }

    /// <summary>Jinja's title filter: upper-case the first letter of each word, words split at whitespace and -([{&lt;.</summary>
    private static string Title(string s)
    {
        var sb = new StringBuilder(s.Length);
        bool wordStart = true;
        foreach (var c in s)
        {
            bool sep = Py.IsSpace(c) || c is '-' or '(' or '{' or '[' or '<';
            if (sep) { sb.Append(c); wordStart = true; continue; }
            sb.Append(wordStart ? char.ToUpperInvariant(c) : char.ToLowerInvariant(c));
            wordStart = false;
        }
        return sb.ToString();
    }

    public static string Escape(string s) => s.Replace("&", "&amp;").Replace("<", "&lt;").Replace(">", "&gt;")
        .Replace("\"", "&#34;").Replace("'", "&#39;");

    private static object? ToFloat(object? v, object? fallback)
    {
        switch (v)
        {
            case double d: return d;
            case long or bool: return Py.ToDouble(v);
            case string s:
                var t = s.Trim().Replace("_", "").ToLowerInvariant();
                if (t is "inf" or "+inf" or "infinity") return double.PositiveInfinity;
                if (t is "-inf" or "-infinity") return double.NegativeInfinity;
                if (t is "nan" or "+nan" or "-nan") return double.NaN;
                if (t.Length > 0 && t.All(ch => char.IsAsciiDigit(ch) || ch is '.' or 'e' or '+' or '-')
                    && double.TryParse(t, NumberStyles.Float, CultureInfo.InvariantCulture, out var r)) return r;
                return fallback;
        }
        return fallback;
    }

    private static object? ToInt(object? v, object? fallback, object? baseArg)
    {
        switch (v)
        {
            case long or bool: return Py.ToLong(v);
            case double d: return double.IsFinite(d) ? (long)Math.Truncate(d) : fallback;
            case string s:
            {
                var t = s.Trim().Replace("_", "");
                long radix = Py.ToLong(baseArg);
                if (radix == 10 && long.TryParse(t, NumberStyles.AllowLeadingSign, CultureInfo.InvariantCulture, out var l)) return l;
                if (radix is 2 or 8 or 16)
                {
                    try { return Convert.ToInt64(t.StartsWith("0x") || t.StartsWith("0o") || t.StartsWith("0b") ? t[2..] : t, (int)radix); }
                    catch (FormatException) { return fallback; }
                }
                return ToFloat(t, null) is double f && double.IsFinite(f) ? (long)Math.Truncate(f) : fallback;
            }
        }
        return fallback;
    }

    private static string Indent(string s, object? width, bool first, bool blank)
    {
        string ind = width is string w ? w : new string(' ', (int)Py.ToLong(width));
        var lines = Methods.SplitLines(s + "\n");
        string rv;
        if (blank) rv = string.Join("\n" + ind, lines);
        else
        {
            rv = lines[0];
            if (lines.Count > 1) rv += "\n" + string.Join("\n", lines.Skip(1).Select(l => l.Length > 0 ? ind + l : l));
        }
        return first ? ind + rv : rv;
    }

    private static string Join(object? v, Args a)
    {
        var sep = Py.Str(a.Get(0, "d", ""));
        var items = Py.Iterate(v);
        if (a.Get(1, "attribute") is { } attr) items = items.Select(AttrGetter(attr, null));
        return string.Join(sep, items.Select(Py.Str));
    }

    /// <summary>Jinja's make_attrgetter: "a.b" / "0" paths looked up with getitem.</summary>
    private static Func<object?, object?> AttrGetter(object attribute, object? defaultValue, Func<object?, object?>? post = null)
    {
        var parts = attribute is string s
            ? s.Split('.').Select(p => long.TryParse(p, NumberStyles.None, CultureInfo.InvariantCulture, out var n) ? (object)n : p).ToList()
            : [attribute];
        return item =>
        {
            foreach (var p in parts)
            {
                item = Interpreter.GetItem(item, p);
                if (item is Undefined && defaultValue is not null) { item = defaultValue; break; }
            }
            return post is null ? item : post(item);
        };
    }

    private static object? IgnoreCase(object? v) => v is string s ? s.ToLowerInvariant() : v;

    private static Func<object?, object?> SortKey(Args a, int attrIndex, int caseIndex)
    {
        bool cs = Py.Truthy(a.Get(caseIndex, "case_sensitive", false));
        Func<object?, object?> post = cs ? x => x : IgnoreCase;
        if (a.Get(attrIndex, "attribute") is not { } attr) return post;
        if (attr is string s && s.Contains(','))
        {
            var getters = s.Split(',').Select(p => AttrGetter(p.Trim(), null, post)).ToList();
            return item => new PyTuple(getters.Select(g => g(item)));
        }
        return AttrGetter(attr, null, post);
    }

    private static readonly IComparer<object?> PyOrder = Comparer<object?>.Create(Py.Compare);

    private static List<object?> Sort(object? v, Args a)
    {
        bool reverse = Py.Truthy(a.Get(0, "reverse", false));
        var key = SortKey(a, 2, 1);
        var items = Py.ToList(v);
        return (reverse ? items.OrderByDescending(key, PyOrder) : items.OrderBy(key, PyOrder)).ToList();
    }

    private static List<object?> DictSort(object? v, Args a)
    {
        if (v is not PyDict d) throw new JinjaError($"the 'dictsort' filter needs a mapping, got {Py.TypeName(v)}");
        bool cs = Py.Truthy(a.Get(0, "case_sensitive", false));
        var by = Py.Str(a.Get(1, "by", "key"));
        bool reverse = Py.Truthy(a.Get(2, "reverse", false));
        int pos = by switch { "key" => 0, "value" => 1, _ => throw new JinjaError("You can only sort by either 'key' or 'value'") };
        var items = d.Select(kv => new PyTuple([kv.Key, kv.Value])).ToList();
        Func<PyTuple, object?> key = t => cs ? t[pos] : IgnoreCase(t[pos]);
        return (reverse ? items.OrderByDescending(key, PyOrder) : items.OrderBy(key, PyOrder)).Cast<object?>().ToList();
    }

    private static List<object?> Unique(object? v, Args a)
    {
        var key = SortKey(a, 1, 0);
        var seen = new List<object?>();
        var result = new List<object?>();
        foreach (var item in Py.Iterate(v))
        {
            var k = key(item);
            if (seen.Any(s => Py.Eq(s, k))) continue;
            seen.Add(k);
            result.Add(item);
        }
        return result;
    }

    private static object? MinMax(object? v, Args a, bool max)
    {
        var key = SortKey(a, 1, 0);
        var items = Py.ToList(v);
        if (items.Count == 0) return new Undefined("No aggregated item, sequence was empty.");
        var best = items[0];
        foreach (var item in items.Skip(1))
        {
            int c = Py.Compare(key(item), key(best));
            if (max ? c > 0 : c < 0) best = item;
        }
        return best;
    }

    private static object? Sum(object? v, Args a)
    {
        object? total = a.Get(1, "start", 0L);
        var items = Py.Iterate(v);
        if (a.Get(0, "attribute") is { } attr) items = items.Select(AttrGetter(attr, null));
        foreach (var x in items) total = Operators.Binary("+", total, x);
        return total;
    }

    private static object? Round(object? v, long precision, string method)
    {
        if (method is not ("common" or "ceil" or "floor")) throw new JinjaError("method must be common, ceil or floor");
        if (v is long or bool && method == "common") return Py.ToLong(v);
        double x = Py.ToDouble(v), scale = Math.Pow(10, precision);
        return method switch
        {
            "common" => PyRound(x, (int)precision),
            "ceil" => Math.Ceiling(x * scale) / scale,
            _ => Math.Floor(x * scale) / scale,
        };
    }

    /// <summary>Python's round(float, n): half-even on the exact binary value (2.675 → 2.67, as it is 2.67499…).</summary>
    private static double PyRound(double x, int digits)
    {
        if (!double.IsFinite(x) || x == 0) return x;
        long bits = BitConverter.DoubleToInt64Bits(x);
        int exp = (int)((bits >> 52) & 0x7FF);
        long frac = bits & 0xFFFFFFFFFFFFFL;
        BigInteger mant = exp == 0 ? frac : frac | (1L << 52);
        int e2 = (exp == 0 ? 1 : exp) - 1075; // |x| = mant * 2^e2
        BigInteger num = mant, den = BigInteger.One;
        if (e2 >= 0) num <<= e2; else den <<= -e2;
        if (digits >= 0) num *= BigInteger.Pow(10, digits); else den *= BigInteger.Pow(10, -digits);
        var q = BigInteger.DivRem(num, den, out var r);
        int half = (r * 2).CompareTo(den);
        if (half > 0 || (half == 0 && !q.IsEven)) q += 1;
        var text = (x < 0 ? "-" : "") + q.ToString(CultureInfo.InvariantCulture) + "E" + (-digits).ToString(CultureInfo.InvariantCulture);
        return double.Parse(text, NumberStyles.Float, CultureInfo.InvariantCulture);
    }

    private static object? ToJson(object? v, Args a)
    {
        bool ascii = Py.Truthy(a.Get(0, "ensure_ascii", false));
        string? indent = a.Get(1, "indent") switch
        {
            null => null,
            string s => s,
            var n => new string(' ', (int)Math.Max(0, Py.ToLong(n))),
        };
        string? itemSep = null, keySep = null;
        if (a.Get(2, "separators") is { } seps)
        {
            var l = Py.ToList(seps);
            if (l.Count != 2) throw new JinjaError("tojson separators must be an (item_separator, key_separator) pair");
            itemSep = Py.Str(l[0]);
            keySep = Py.Str(l[1]);
        }
        return PyJson.Dumps(v, ascii, indent, itemSep, keySep, Py.Truthy(a.Get(3, "sort_keys", false)));
    }

    private static List<object?> Map(Interpreter it, object? v, Args a)
    {
        var items = Py.Iterate(v);
        if (a.Count == 0 && a.Has(int.MaxValue, "attribute"))
            return items.Select(AttrGetter(a.Get(int.MaxValue, "attribute")!, a.Get(int.MaxValue, "default"))).ToList();
        if (a.Count == 0) throw new JinjaError("map() needs a filter name or attribute=");
        var filter = Py.Str(a.Positional[0]);
        var rest = a.Positional.Skip(1).ToList();
        return items.Select(x => Apply(it, filter, x, new Args(filter, rest, new()))).ToList();
    }

    private static List<object?> SelectReject(Interpreter it, object? v, Args a, bool attr, bool keep)
    {
        var pos = a.Positional;
        int i = 0;
        Func<object?, object?> get = x => x;
        if (attr)
        {
            if (pos.Count == 0) throw new JinjaError("selectattr/rejectattr need an attribute name");
            get = AttrGetter(pos[i++]!, null);
        }
        Func<object?, bool> test;
        if (i < pos.Count)
        {
            var name = Py.Str(pos[i++]);
            var args = pos.Skip(i).ToList();
            test = x => Tests.Apply(name, x, args);
        }
        else test = Py.Truthy;
        return Py.Iterate(v).Where(x => test(get(x)) == keep).ToList();
    }
}
