using PeftSharp.Runtime;
using System.Globalization;
using System.Text;

namespace PeftSharp.Tokenization.ChatTemplates.Jinja;

/// <summary>Python's binary operators and comparisons on template values.</summary>
internal static class Operators
{
    public static object? Binary(string op, object? a, object? b)
    {
        if (a is Undefined ua) throw ua.Fail();
        if (b is Undefined ub) throw ub.Fail();
        bool ints = a is long or bool && b is long or bool;
        bool nums = Py.IsNumber(a) && Py.IsNumber(b);
        switch (op)
        {
            case "+":
                if (ints) return checked(Py.ToLong(a) + Py.ToLong(b));
                if (nums) return Py.ToDouble(a) + Py.ToDouble(b);
                if (a is string sa && b is string sb) return sa + sb;
                if (a is string) throw new JinjaError($"can only concatenate str (not \"{Py.TypeName(b)}\") to str");
                if (a is List<object?> la && b is List<object?> lb && (a is PyTuple) == (b is PyTuple))
                {
                    var items = la.Concat(lb);
                    return a is PyTuple ? new PyTuple(items) : items.ToList();
                }
                break;
            case "-":
                if (ints) return checked(Py.ToLong(a) - Py.ToLong(b));
                if (nums) return Py.ToDouble(a) - Py.ToDouble(b);
                break;
            case "*":
                if (ints) return checked(Py.ToLong(a) * Py.ToLong(b));
                if (nums) return Py.ToDouble(a) * Py.ToDouble(b);
                if (a is string or List<object?> && b is long or bool) return Repeat(a, Py.ToLong(b));
                if (b is string or List<object?> && a is long or bool) return Repeat(b, Py.ToLong(a));
                break;
            case "/":
                if (nums)
                {
                    var d = Py.ToDouble(b);
                    if (d == 0) throw new JinjaError("division by zero");
                    return Py.ToDouble(a) / d;
                }
                break;
            case "//":
                if (ints)
                {
                    long x = Py.ToLong(a), y = Py.ToLong(b);
                    if (y == 0) throw new JinjaError("integer division or modulo by zero");
                    long q = x / y;
                    return (x % y != 0 && (x < 0) != (y < 0)) ? q - 1 : q;
                }
                if (nums)
                {
                    var d = Py.ToDouble(b);
                    if (d == 0) throw new JinjaError("float floor division by zero");
                    return Math.Floor(Py.ToDouble(a) / d);
                }
                break;
            case "%":
                if (a is string fmt) return Format.Percent(fmt, b);
                if (ints)
                {
                    long x = Py.ToLong(a), y = Py.ToLong(b);
                    if (y == 0) throw new JinjaError("integer division or modulo by zero");
                    long r = x % y;
                    return r != 0 && (r < 0) != (y < 0) ? r + y : r;
                }
                if (nums)
                {
                    double x = Py.ToDouble(a), y = Py.ToDouble(b);
                    if (y == 0) throw new JinjaError("float modulo");
                    double r = x % y;
                    return r != 0 && (r < 0) != (y < 0) ? r + y : r;
                }
                break;
            case "**":
                if (ints && Py.ToLong(b) >= 0)
                {
                    long x = Py.ToLong(a), e = Py.ToLong(b), r = 1;
                    for (long i = 0; i < e; i++) r = checked(r * x);
                    return r;
                }
                if (nums) return Math.Pow(Py.ToDouble(a), Py.ToDouble(b));
                break;
        }
        throw new JinjaError($"unsupported operand type(s) for {op}: '{Py.TypeName(a)}' and '{Py.TypeName(b)}'");
    }

    private static object Repeat(object seq, long n)
    {
        // Checked before building: 'x' * 10000000000 must fail fast, not exhaust memory.
        long unit = seq is string str ? str.Length : ((List<object?>)seq).Count;
        if (n > 0 && unit > 0 && n > ResourceLimits.JinjaMaxOutput.Value / unit)
            throw new PeftLimitException($"chat template: repeating a {Py.TypeName(seq)} of length {unit} {n} times", ResourceLimits.JinjaMaxOutput);
        if (seq is string s)
        {
            var sb = new StringBuilder();
            for (long i = 0; i < n; i++) sb.Append(s);
            return sb.ToString();
        }
        var l = (List<object?>)seq;
        var items = Enumerable.Range(0, (int)Math.Max(0, n)).SelectMany(_ => l);
        return l is PyTuple ? new PyTuple(items) : items.ToList();
    }

    public static bool Compare(string op, object? a, object? b) => op switch
    {
        "==" => Py.Eq(a, b),
        "!=" => !Py.Eq(a, b),
        "<" => Order(a, b) < 0,
        "<=" => Order(a, b) <= 0,
        ">" => Order(a, b) > 0,
        ">=" => Order(a, b) >= 0,
        "in" => Py.Contains(b, a),
        "notin" => !Py.Contains(b, a),
        _ => throw new JinjaError($"unknown comparison '{op}'"),
    };

    private static int Order(object? a, object? b)
    {
        if (a is Undefined ua) throw ua.Fail();
        if (b is Undefined ub) throw ub.Fail();
        return Py.Compare(a, b);
    }
}

/// <summary>Python's printf-style `%` and `str.format` for the simple fields templates use.</summary>
internal static class Format
{
    public static string Percent(string fmt, object? args)
    {
        var positional = args is PyTuple t ? t : new List<object?> { args };
        var mapping = args as PyDict;
        int next = 0;
        var sb = new StringBuilder();
        for (int i = 0; i < fmt.Length; i++)
        {
            if (fmt[i] != '%') { sb.Append(fmt[i]); continue; }
            if (++i >= fmt.Length) throw new JinjaError("incomplete format");
            object? value;
            if (fmt[i] == '%') { sb.Append('%'); continue; }
            if (fmt[i] == '(')
            {
                int close = fmt.IndexOf(')', i);
                if (close < 0 || mapping is null) throw new JinjaError("format requires a mapping");
                var key = fmt[(i + 1)..close];
                value = mapping.TryGetValue(key, out var mv) ? mv : throw new JinjaError($"format key '{key}' is missing");
                i = close + 1;
            }
            else
            {
                if (next >= positional.Count) throw new JinjaError("not enough arguments for format string");
                value = positional[next++];
            }
            int? precision = null;
            if (i < fmt.Length && fmt[i] == '.')
            {
                int s = ++i;
                while (i < fmt.Length && char.IsAsciiDigit(fmt[i])) i++;
                precision = int.Parse(fmt.AsSpan(s, i - s), CultureInfo.InvariantCulture);
            }
            if (i >= fmt.Length) throw new JinjaError("incomplete format");
            switch (fmt[i])
            {
                case 's': sb.Append(Py.Str(value)); break;
                case 'r': sb.Append(Py.Repr(value)); break;
                case 'd' or 'i':
                    sb.Append(value is double d ? ((long)Math.Truncate(d)).ToString(CultureInfo.InvariantCulture)
                        : Py.ToLong(value).ToString(CultureInfo.InvariantCulture));
                    break;
                case 'f':
                    sb.Append(Py.ToDouble(value).ToString("F" + (precision ?? 6), CultureInfo.InvariantCulture));
                    break;
                default: throw new JinjaError($"format directive '%{fmt[i]}' is not supported");
            }
        }
        if (mapping is null && next < positional.Count && args is PyTuple)
            throw new JinjaError("not all arguments converted during string formatting");
        return sb.ToString();
    }

    public static string StrFormat(string fmt, Args a)
    {
        var sb = new StringBuilder();
        int auto = 0;
        for (int i = 0; i < fmt.Length; i++)
        {
            char c = fmt[i];
            if (c == '}' && i + 1 < fmt.Length && fmt[i + 1] == '}') { sb.Append('}'); i++; continue; }
            if (c != '{') { sb.Append(c); continue; }
            if (i + 1 < fmt.Length && fmt[i + 1] == '{') { sb.Append('{'); i++; continue; }
            int close = fmt.IndexOf('}', i);
            if (close < 0) throw new JinjaError("single '{' encountered in format string");
            var field = fmt[(i + 1)..close];
            if (field.IndexOfAny([':', '!', '.', '[']) >= 0)
                throw new JinjaError($"str.format field '{{{field}}}' uses a conversion, format spec or lookup, which is not supported");
            object? value = field.Length == 0 ? a.Required(auto++, "{}")
                : int.TryParse(field, NumberStyles.None, CultureInfo.InvariantCulture, out var idx) ? a.Required(idx, field)
                : a.Required(int.MaxValue, field);
            sb.Append(Py.Str(value));
            i = close;
        }
        return sb.ToString();
    }
}
