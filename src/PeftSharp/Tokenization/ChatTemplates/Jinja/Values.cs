using System.Globalization;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;

namespace PeftSharp.Tokenization.ChatTemplates.Jinja;

/// <summary>An error raised while rendering; the interpreter adds the template line.</summary>
internal sealed class JinjaError(string message) : Exception(message);

/// <summary>Jinja's Undefined: falsy, renders empty, iterates as empty; most other uses are errors.</summary>
internal sealed class Undefined(string hint)
{
    public string Hint { get; } = hint;
    public JinjaError Fail() => new(Hint);
}

internal sealed class PyTuple : List<object?>
{
    public PyTuple(IEnumerable<object?> items) : base(items) { }
}

/// <summary>A Python dict: insertion-ordered, keys compared with Python equality (1 == 1.0 == True).</summary>
internal sealed class PyDict : OrderedDictionary<object, object?>
{
    public PyDict() : base(PyKeyComparer.Instance) { }
}

internal sealed class PyKeyComparer : IEqualityComparer<object>
{
    public static readonly PyKeyComparer Instance = new();
    public new bool Equals(object? x, object? y) => Py.Eq(x, y);
    public int GetHashCode(object obj) => obj switch
    {
        bool b => b ? 1 : 0,
        long l => l.GetHashCode(),
        double d when d == Math.Floor(d) && Math.Abs(d) < 9e18 => ((long)d).GetHashCode(),
        _ => obj.GetHashCode(),
    };
}

/// <summary>The object `namespace(...)` returns: the one thing `{% set ns.attr = ... %}` may change.</summary>
internal sealed class Namespace
{
    public PyDict Attrs { get; } = new();
}

internal interface ICallable
{
    string Name { get; }
    object? Call(Interpreter it, List<object?> args, Dictionary<string, object?> kwargs);
}

internal sealed class BuiltinFunction(string name, Func<Interpreter, List<object?>, Dictionary<string, object?>, object?> body) : ICallable
{
    public string Name { get; } = name;
    public object? Call(Interpreter it, List<object?> args, Dictionary<string, object?> kwargs) => body(it, args, kwargs);
}

/// <summary>`obj.method` before it is called (string, dict and list methods).</summary>
internal sealed class BoundMethod(object target, string name) : ICallable
{
    public object Target { get; } = target;
    public string Name { get; } = name;
    public object? Call(Interpreter it, List<object?> args, Dictionary<string, object?> kwargs) =>
        Methods.Call(Target, Name, new Args(Name, args, kwargs));
}

/// <summary>The `loop` variable of a for loop.</summary>
internal sealed class LoopInfo(List<object?> items)
{
    public int Index0 { get; set; }
    public int Length => items.Count;

    public object? Get(string attr) => attr switch
    {
        "index" => (long)Index0 + 1,
        "index0" => (long)Index0,
        "revindex" => (long)(Length - Index0),
        "revindex0" => (long)(Length - Index0 - 1),
        "first" => Index0 == 0,
        "last" => Index0 == Length - 1,
        "length" => (long)Length,
        "depth" => 1L,
        "depth0" => 0L,
        "previtem" => Index0 > 0 ? items[Index0 - 1] : new Undefined("there is no previous item"),
        "nextitem" => Index0 < Length - 1 ? items[Index0 + 1] : new Undefined("there is no next item"),
        "cycle" => new BuiltinFunction("loop.cycle", (_, a, _) =>
            a.Count == 0 ? throw new JinjaError("loop.cycle() needs at least one argument") : a[Index0 % a.Count]),
        "changed" => new BuiltinFunction("loop.changed", (_, a, _) => Changed(a)),
        _ => new Undefined($"'loop' has no attribute '{attr}'"),
    };

    private List<object?>? _lastChanged;

    private bool Changed(List<object?> values)
    {
        if (_lastChanged is not null && Py.Eq(new PyTuple(_lastChanged), new PyTuple(values))) return false;
        _lastChanged = values;
        return true;
    }
}

/// <summary>Positional and keyword arguments of a filter, test, method or global, bound by position or name.</summary>
internal sealed class Args(string owner, List<object?> positional, Dictionary<string, object?> kwargs)
{
    private readonly HashSet<string> _used = new();
    public int Count => positional.Count;
    public List<object?> Positional => positional;

    public bool Has(int index, string name) => index < positional.Count || kwargs.ContainsKey(name);

    public object? Get(int index, string name, object? fallback = null)
    {
        _used.Add(name);
        if (index < positional.Count)
        {
            if (kwargs.ContainsKey(name)) throw new JinjaError($"{owner}() got multiple values for argument '{name}'");
            return positional[index];
        }
        return kwargs.TryGetValue(name, out var v) ? v : fallback;
    }

    public object? Required(int index, string name) =>
        Has(index, name) ? Get(index, name) : throw new JinjaError($"{owner}() missing required argument '{name}'");

    /// <summary>Rejects arguments nobody asked for (a silent ignore could change the output).</summary>
    public void Done(int maxPositional)
    {
        if (positional.Count > maxPositional)
            throw new JinjaError($"{owner}() takes at most {maxPositional} positional arguments ({positional.Count} given)");
        foreach (var k in kwargs.Keys)
            if (!_used.Contains(k)) throw new JinjaError($"{owner}() got an unexpected keyword argument '{k}'");
    }
}

/// <summary>Python semantics for the values a template sees: truthiness, str(), repr(), ==, ordering, arithmetic.</summary>
internal static class Py
{
    public static object? FromJson(JsonNode? node)
    {
        switch (node)
        {
            case null: return null;
            case JsonObject o:
            {
                var d = new PyDict();
                foreach (var (k, v) in o) d[k] = FromJson(v);
                return d;
            }
            case JsonArray a: return a.Select(FromJson).ToList();
        }
        var value = node.AsValue();
        switch (value.GetValueKind())
        {
            case JsonValueKind.String: return value.GetValue<string>();
            case JsonValueKind.True: return true;
            case JsonValueKind.False: return false;
            case JsonValueKind.Null: return null;
            case JsonValueKind.Number:
            {
                // Python's json.loads: integers stay int, anything with '.', 'e' becomes float.
                var text = value.ToJsonString();
                if (text.IndexOfAny(['.', 'e', 'E']) < 0 && long.TryParse(text, NumberStyles.AllowLeadingSign, CultureInfo.InvariantCulture, out var l))
                    return l;
                return double.Parse(text, NumberStyles.Float, CultureInfo.InvariantCulture);
            }
        }
        throw new JinjaError($"unsupported JSON value {node.ToJsonString()}");
    }

    public static string TypeName(object? v) => v switch
    {
        null => "NoneType",
        Undefined => "Undefined",
        bool => "bool",
        long => "int",
        double => "float",
        string => "str",
        PyTuple => "tuple",
        List<object?> => "list",
        PyDict => "dict",
        Namespace => "Namespace",
        LoopInfo => "LoopContext",
        ICallable => "function",
        _ => v.GetType().Name,
    };

    public static bool Truthy(object? v) => v switch
    {
        null or Undefined => false,
        bool b => b,
        long l => l != 0,
        double d => d != 0,
        string s => s.Length > 0,
        List<object?> l => l.Count > 0,
        PyDict d => d.Count > 0,
        _ => true,
    };

    public static bool IsNumber(object? v) => v is long or double or bool;

    public static double ToDouble(object? v) => v switch
    {
        long l => l,
        double d => d,
        bool b => b ? 1 : 0,
        _ => throw new JinjaError($"expected a number, got {TypeName(v)}"),
    };

    // ------------------------------------------------------------ str / repr

    public static string Str(object? v) => v switch
    {
        null => "None",
        Undefined => "",
        string s => s,
        bool b => b ? "True" : "False",
        long l => l.ToString(CultureInfo.InvariantCulture),
        double d => FloatRepr(d),
        Namespace ns => "<Namespace " + Repr(ns.Attrs) + ">",
        ICallable c => throw new JinjaError($"cannot render the function '{c.Name}' as text (did you forget the call parentheses?)"),
        LoopInfo => "<LoopContext>",
        _ => Repr(v),
    };

    public static string Repr(object? v)
    {
        switch (v)
        {
            case string s: return StrRepr(s);
            case PyTuple t:
                return t.Count == 1 ? "(" + Repr(t[0]) + ",)" : "(" + string.Join(", ", t.Select(Repr)) + ")";
            case List<object?> l: return "[" + string.Join(", ", l.Select(Repr)) + "]";
            case PyDict d: return "{" + string.Join(", ", d.Select(kv => Repr(kv.Key) + ": " + Repr(kv.Value))) + "}";
            case Undefined: return "Undefined";
            default: return Str(v);
        }
    }

    private static string StrRepr(string s)
    {
        char q = s.Contains('\'') && !s.Contains('"') ? '"' : '\'';
        var sb = new StringBuilder().Append(q);
        foreach (var r in s.EnumerateRunes())
        {
            int c = r.Value;
            if (c == q || c == '\\') sb.Append('\\').Append((char)c);
            else if (c == '\n') sb.Append("\\n");
            else if (c == '\r') sb.Append("\\r");
            else if (c == '\t') sb.Append("\\t");
            else if (IsPrintable(r)) sb.Append(r.ToString());
            else if (c < 0x100) sb.Append($"\\x{c:x2}");
            else if (c < 0x10000) sb.Append($"\\u{c:x4}");
            else sb.Append($"\\U{c:x8}");
        }
        return sb.Append(q).ToString();
    }

    private static bool IsPrintable(Rune r)
    {
        if (r.Value == ' ') return true;
        var cat = Rune.GetUnicodeCategory(r);
        return cat is not (UnicodeCategory.Control or UnicodeCategory.Format or UnicodeCategory.Surrogate
            or UnicodeCategory.PrivateUse or UnicodeCategory.OtherNotAssigned or UnicodeCategory.LineSeparator
            or UnicodeCategory.ParagraphSeparator or UnicodeCategory.SpaceSeparator);
    }

    /// <summary>Python's float repr: shortest round-trip digits, exponent form below 1e-4 and from 1e16.</summary>
    public static string FloatRepr(double d)
    {
        if (double.IsNaN(d)) return "nan";
        if (double.IsInfinity(d)) return d > 0 ? "inf" : "-inf";
        if (d == 0) return double.IsNegative(d) ? "-0.0" : "0.0";
        // Shortest digits: "R" gives them, then normalise "1.5E+20"/"123.45" into digits + decimal point position.
        var shortest = Math.Abs(d).ToString("R", CultureInfo.InvariantCulture);
        int exp = 0;
        int ePos = shortest.IndexOfAny(['E', 'e']);
        var mant = shortest;
        if (ePos >= 0)
        {
            exp = int.Parse(shortest[(ePos + 1)..], NumberStyles.AllowLeadingSign, CultureInfo.InvariantCulture);
            mant = shortest[..ePos];
        }
        int dot = mant.IndexOf('.');
        string digits = dot < 0 ? mant : mant[..dot] + mant[(dot + 1)..];
        int decpt = (dot < 0 ? mant.Length : dot) + exp;
        int lead = 0;
        while (lead < digits.Length - 1 && digits[lead] == '0') { lead++; decpt--; }
        digits = digits[lead..].TrimEnd('0');
        if (digits.Length == 0) digits = "0";
        var sb = new StringBuilder();
        if (d < 0) sb.Append('-');
        if (decpt <= -4 || decpt > 16)
        {
            sb.Append(digits[0]);
            if (digits.Length > 1) sb.Append('.').Append(digits, 1, digits.Length - 1);
            int e = decpt - 1;
            sb.Append('e').Append(e < 0 ? '-' : '+').Append(Math.Abs(e).ToString("00", CultureInfo.InvariantCulture));
        }
        else if (decpt <= 0) sb.Append("0.").Append('0', -decpt).Append(digits);
        else if (decpt >= digits.Length) sb.Append(digits).Append('0', decpt - digits.Length).Append(".0");
        else sb.Append(digits, 0, decpt).Append('.').Append(digits, decpt, digits.Length - decpt);
        return sb.ToString();
    }

    // ------------------------------------------------------------ strings by code point (Python indexes code points)

    public static List<string> CodePoints(string s)
    {
        var list = new List<string>(s.Length);
        for (int i = 0; i < s.Length; i++)
        {
            if (char.IsHighSurrogate(s[i]) && i + 1 < s.Length && char.IsLowSurrogate(s[i + 1])) { list.Add(s.Substring(i, 2)); i++; }
            else list.Add(s[i].ToString());
        }
        return list;
    }

    public static long Len(object? v) => v switch
    {
        string s => s.Any(char.IsSurrogate) ? CodePoints(s).Count : s.Length,
        List<object?> l => l.Count,
        PyDict d => d.Count,
        Namespace ns => ns.Attrs.Count,
        Undefined => 0,
        _ => throw new JinjaError($"object of type '{TypeName(v)}' has no len()"),
    };

    public static bool IsSpace(char c) =>
        c is ' ' or '\t' or '\n' or '\r' or '\v' or '\f' or '\x1c' or '\x1d' or '\x1e' or '\x1f' or '\x85' or '\xa0'
        || (c > 0xff && char.GetUnicodeCategory(c) is UnicodeCategory.SpaceSeparator or UnicodeCategory.LineSeparator
            or UnicodeCategory.ParagraphSeparator);

    public static string Strip(string s, string? chars, bool left, bool right)
    {
        Func<char, bool> drop = chars is null ? IsSpace : chars.Contains;
        int a = 0, b = s.Length;
        if (left) while (a < b && drop(s[a])) a++;
        if (right) while (b > a && drop(s[b - 1])) b--;
        return s[a..b];
    }

    public static string RStrip(string s) => Strip(s, null, false, true);

    // ------------------------------------------------------------ iteration, equality, ordering

    public static IEnumerable<object?> Iterate(object? v) => v switch
    {
        Undefined => [],
        string s => CodePoints(s),
        List<object?> l => l,
        PyDict d => d.Keys,
        _ => throw new JinjaError($"'{TypeName(v)}' object is not iterable"),
    };

    public static List<object?> ToList(object? v) => Iterate(v).ToList();

    public static bool Eq(object? a, object? b)
    {
        if (a is null || b is null) return a is null && b is null;
        if (IsNumber(a) && IsNumber(b))
            return a is double || b is double ? ToDouble(a) == ToDouble(b) : ToLong(a) == ToLong(b);
        switch (a)
        {
            case string sa: return b is string sb && sa == sb;
            case Undefined: return b is Undefined;
            case List<object?> la:
                if (b is not List<object?> lb || (a is PyTuple) != (b is PyTuple) || la.Count != lb.Count) return false;
                for (int i = 0; i < la.Count; i++) if (!Eq(la[i], lb[i])) return false;
                return true;
            case PyDict da:
                if (b is not PyDict db || da.Count != db.Count) return false;
                foreach (var (k, v) in da)
                    if (!db.TryGetValue(k, out var bv) || !Eq(v, bv)) return false;
                return true;
        }
        return ReferenceEquals(a, b);
    }

    public static long ToLong(object? v) => v switch
    {
        long l => l,
        bool b => b ? 1 : 0,
        _ => throw new JinjaError($"expected an integer, got {TypeName(v)}"),
    };

    public static int Compare(object? a, object? b)
    {
        if (IsNumber(a) && IsNumber(b))
            return a is double || b is double ? ToDouble(a).CompareTo(ToDouble(b)) : ToLong(a).CompareTo(ToLong(b));
        if (a is string sa && b is string sb) return CompareCodePoints(sa, sb);
        if (a is List<object?> la && b is List<object?> lb && (a is PyTuple) == (b is PyTuple))
        {
            for (int i = 0; i < Math.Min(la.Count, lb.Count); i++)
            {
                if (Eq(la[i], lb[i])) continue;
                return Compare(la[i], lb[i]);
            }
            return la.Count.CompareTo(lb.Count);
        }
        throw new JinjaError($"'<' not supported between instances of '{TypeName(a)}' and '{TypeName(b)}'");
    }

    public static int CompareCodePoints(string a, string b)
    {
        int i = 0, j = 0;
        while (i < a.Length && j < b.Length)
        {
            int ca = NextCodePoint(a, ref i), cb = NextCodePoint(b, ref j);
            if (ca != cb) return ca.CompareTo(cb);
        }
        return (a.Length - i).CompareTo(b.Length - j);
    }

    private static int NextCodePoint(string s, ref int i)
    {
        int c = s[i];
        if (char.IsHighSurrogate(s[i]) && i + 1 < s.Length && char.IsLowSurrogate(s[i + 1])) { c = char.ConvertToUtf32(s[i], s[i + 1]); i++; }
        i++;
        return c;
    }

    public static bool Contains(object? container, object? item) => container switch
    {
        string s => item is string sub ? s.Contains(sub, StringComparison.Ordinal)
            : throw new JinjaError($"'in <string>' requires string as left operand, not {TypeName(item)}"),
        List<object?> l => l.Any(x => Eq(x, item)),
        PyDict d => item is not null && d.ContainsKey(item),
        Undefined u => throw u.Fail(),
        _ => throw new JinjaError($"argument of type '{TypeName(container)}' is not iterable"),
    };

    /// <summary>Python slice semantics (negative indices, steps, clamping).</summary>
    public static List<int> SliceIndices(int length, long? start, long? stop, long? step)
    {
        long st = step ?? 1;
        if (st == 0) throw new JinjaError("slice step cannot be zero");
        long lo, hi;
        if (st > 0)
        {
            lo = start is null ? 0 : Clamp(start.Value < 0 ? start.Value + length : start.Value, 0, length);
            hi = stop is null ? length : Clamp(stop.Value < 0 ? stop.Value + length : stop.Value, 0, length);
        }
        else
        {
            lo = start is null ? length - 1 : Clamp(start.Value < 0 ? start.Value + length : start.Value, -1, length - 1);
            hi = stop is null ? -1 : Clamp(stop.Value < 0 ? stop.Value + length : stop.Value, -1, length - 1);
        }
        var idx = new List<int>();
        for (long i = lo; st > 0 ? i < hi : i > hi; i += st) idx.Add((int)i);
        return idx;
    }

    private static long Clamp(long v, long lo, long hi) => Math.Max(lo, Math.Min(hi, v));
}
