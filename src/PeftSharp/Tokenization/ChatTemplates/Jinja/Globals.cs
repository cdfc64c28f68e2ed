using PeftSharp.Runtime;
using System.Globalization;
using System.Text;

namespace PeftSharp.Tokenization.ChatTemplates.Jinja;

/// <summary>Jinja's global functions plus the two HF adds (raise_exception, strftime_now).</summary>
internal static class Globals
{
    private const long MaxRange = 100_000; // Jinja's sandbox limit

    public static readonly IReadOnlyDictionary<string, object?> All = new Dictionary<string, object?>
    {
        ["range"] = new BuiltinFunction("range", (_, a, kw) => Range(a, kw)),
        ["namespace"] = new BuiltinFunction("namespace", (_, a, kw) => MakeNamespace(a, kw)),
        ["dict"] = new BuiltinFunction("dict", (_, a, kw) =>
        {
            var ns = MakeNamespace(a, kw);
            return ns.Attrs;
        }),
        ["raise_exception"] = new BuiltinFunction("raise_exception", (_, a, kw) =>
            throw new ChatTemplateRaisedException(Py.Str(new Args("raise_exception", a, kw).Required(0, "message")))),
        ["strftime_now"] = new BuiltinFunction("strftime_now", (it, a, kw) =>
        {
            var args = new Args("strftime_now", a, kw);
            var fmt = Py.Str(args.Required(0, "format"));
            args.Done(1);
            return StrFTime(it.Now(), fmt);
        }),
        ["cycler"] = Unsupported("cycler"),
        ["joiner"] = Unsupported("joiner"),
        ["lipsum"] = Unsupported("lipsum"),
    };

    private static BuiltinFunction Unsupported(string name) =>
        new(name, (_, _, _) => throw new JinjaError($"the global function '{name}' is not supported in chat templates"));

    private static List<object?> Range(List<object?> a, Dictionary<string, object?> kw)
    {
        if (kw.Count > 0) throw new JinjaError("range() takes no keyword arguments");
        long start = 0, stop, step = 1;
        switch (a.Count)
        {
            case 1: stop = Py.ToLong(a[0]); break;
            case 2: start = Py.ToLong(a[0]); stop = Py.ToLong(a[1]); break;
            case 3: start = Py.ToLong(a[0]); stop = Py.ToLong(a[1]); step = Py.ToLong(a[2]); break;
            default: throw new JinjaError($"range expected 1 to 3 arguments, got {a.Count}");
        }
        if (step == 0) throw new JinjaError("range() arg 3 must not be zero");
        var list = new List<object?>();
        for (long i = start; step > 0 ? i < stop : i > stop; i += step)
        {
            if (list.Count >= MaxRange) throw new JinjaError($"range too big, at most {MaxRange} items are allowed");
            if (list.Count >= ResourceLimits.JinjaMaxIterations.Value)
                throw new PeftLimitException("chat template: a range()", ResourceLimits.JinjaMaxIterations);
            list.Add(i);
        }
        return list;
    }

    private static Namespace MakeNamespace(List<object?> a, Dictionary<string, object?> kw)
    {
        var ns = new Namespace();
        if (a.Count > 1) throw new JinjaError("namespace()/dict() take at most one positional argument");
        if (a.Count == 1)
        {
            if (a[0] is PyDict d) foreach (var (k, v) in d) ns.Attrs[k] = v;
            else foreach (var pair in Py.Iterate(a[0]))
            {
                var kv = Py.ToList(pair);
                if (kv.Count != 2 || kv[0] is null) throw new JinjaError("dictionary update sequence element must be a pair");
                ns.Attrs[kv[0]!] = kv[1];
            }
        }
        foreach (var (k, v) in kw) ns.Attrs[k] = v;
        return ns;
    }

    /// <summary>Python's strftime for the directives templates use (C locale names).</summary>
    public static string StrFTime(DateTime t, string fmt)
    {
        var inv = CultureInfo.InvariantCulture;
        var sb = new StringBuilder();
        for (int i = 0; i < fmt.Length; i++)
        {
            if (fmt[i] != '%' || i + 1 >= fmt.Length) { sb.Append(fmt[i]); continue; }
            char c = fmt[++i];
            bool noPad = false;
            if (c == '-' && i + 1 < fmt.Length) { noPad = true; c = fmt[++i]; }
            string Num(int v, int width) => noPad ? v.ToString(inv) : v.ToString(new string('0', width), inv);
            sb.Append(c switch
            {
                'a' => t.ToString("ddd", inv),
                'A' => t.ToString("dddd", inv),
                'b' or 'h' => t.ToString("MMM", inv),
                'B' => t.ToString("MMMM", inv),
                'd' => Num(t.Day, 2),
                'e' => noPad ? t.Day.ToString(inv) : t.Day.ToString(inv).PadLeft(2),
                'm' => Num(t.Month, 2),
                'y' => Num(t.Year % 100, 2),
                'Y' => t.Year.ToString(inv),
                'H' => Num(t.Hour, 2),
                'I' => Num(t.Hour % 12 == 0 ? 12 : t.Hour % 12, 2),
                'M' => Num(t.Minute, 2),
                'S' => Num(t.Second, 2),
                'p' => t.Hour < 12 ? "AM" : "PM",
                'j' => Num(t.DayOfYear, 3),
                'F' => t.ToString("yyyy-MM-dd", inv),
                'T' => t.ToString("HH:mm:ss", inv),
                'D' => t.ToString("MM/dd/yy", inv),
                'u' => ((int)t.DayOfWeek == 0 ? 7 : (int)t.DayOfWeek).ToString(inv),
                'w' => ((int)t.DayOfWeek).ToString(inv),
                '%' => "%",
                _ => throw new JinjaError($"strftime directive '%{c}' is not supported"),
            });
        }
        return sb.ToString();
    }
}
