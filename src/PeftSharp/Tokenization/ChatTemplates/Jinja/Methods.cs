using System.Text;

namespace PeftSharp.Tokenization.ChatTemplates.Jinja;

/// <summary>Python methods of str, dict and list that templates call (`content.split('x')`, `d.items()`).</summary>
internal static class Methods
{
    // Every public method of Python's str: `s.name` is a method (call may still be unsupported), anything else is undefined.
    private static readonly HashSet<string> StrMethods = new()
    {
        "capitalize", "casefold", "center", "count", "encode", "endswith", "expandtabs", "find", "format", "format_map",
        "index", "isalnum", "isalpha", "isascii", "isdecimal", "isdigit", "isidentifier", "islower", "isnumeric",
        "isprintable", "isspace", "istitle", "isupper", "join", "ljust", "lower", "lstrip", "maketrans", "partition",
        "removeprefix", "removesuffix", "replace", "rfind", "rindex", "rjust", "rpartition", "rsplit", "rstrip", "split",
        "splitlines", "startswith", "strip", "swapcase", "title", "translate", "upper", "zfill",
    };
    private static readonly HashSet<string> DictMethods = new() { "copy", "fromkeys", "get", "items", "keys", "values" };
    private static readonly HashSet<string> ListMethods = new() { "copy", "count", "index" };
    // ImmutableSandboxedEnvironment (what HF uses) refuses everything that changes a list or dict.
    private static readonly HashSet<string> Mutators = new()
    {
        "append", "clear", "extend", "insert", "pop", "popitem", "remove", "reverse", "setdefault", "sort", "update",
    };

    public static object? Lookup(object? obj, string name)
    {
        bool known = obj switch
        {
            string => StrMethods.Contains(name),
            PyDict => DictMethods.Contains(name),
            List<object?> => ListMethods.Contains(name),
            _ => false,
        };
        if (known) return new BoundMethod(obj!, name);
        if (obj is PyDict or List<object?> && Mutators.Contains(name))
            return new Undefined($"access to attribute '{name}' of '{Py.TypeName(obj)}' object is unsafe (templates cannot modify values)");
        return null;
    }

    public static object? Call(object target, string name, Args a)
    {
        object? result = target switch
        {
            string s => CallStr(s, name, a),
            PyDict d => name switch
            {
                "get" => d.TryGetValue(a.Required(0, "key") ?? throw new JinjaError("None is not a valid key"), out var v) ? v : a.Get(1, "default"),
                "items" => d.Select(kv => (object?)new PyTuple([kv.Key, kv.Value])).ToList(),
                "keys" => d.Keys.ToList(),
                "values" => d.Values.ToList(),
                "copy" => Copy(d),
                _ => throw new JinjaError($"dict method '{name}' is not supported"),
            },
            List<object?> l => name switch
            {
                "count" => (long)l.Count(x => Py.Eq(x, a.Required(0, "value"))),
                "index" => l.FindIndex(x => Py.Eq(x, a.Required(0, "value"))) is var i and >= 0 ? (long)i
                    : throw new JinjaError($"{Py.Repr(a.Get(0, "value"))} is not in list"),
                "copy" => l.ToList(),
                _ => throw new JinjaError($"list method '{name}' is not supported"),
            },
            _ => throw new JinjaError($"'{Py.TypeName(target)}' has no method '{name}'"),
        };
        a.Done(name == "format" ? int.MaxValue : 3);
        return result;
    }

    private static PyDict Copy(PyDict d)
    {
        var c = new PyDict();
        foreach (var (k, v) in d) c[k] = v;
        return c;
    }

    private static string? Chars(Args a) => a.Get(0, "chars") switch
    {
        null => null,
        string s => s,
        var v => throw new JinjaError($"strip arg must be None or str, not {Py.TypeName(v)}"),
    };

    private static object? CallStr(string s, string name, Args a)
    {
        switch (name)
        {
            case "startswith" or "endswith":
            {
                var arg = a.Required(0, "prefix");
                var options = arg is PyTuple t ? t.Select(Py.Str) : arg is string one ? [one]
                    : throw new JinjaError($"{name} first arg must be str or a tuple of str, not {Py.TypeName(arg)}");
                if (a.Has(1, "start")) throw new JinjaError($"str.{name} with start/end arguments is not supported");
                return options.Any(o => name == "startswith" ? s.StartsWith(o, StringComparison.Ordinal) : s.EndsWith(o, StringComparison.Ordinal));
            }
            case "strip": return Py.Strip(s, Chars(a), true, true);
            case "lstrip": return Py.Strip(s, Chars(a), true, false);
            case "rstrip": return Py.Strip(s, Chars(a), false, true);
            case "split": return Split(s, a.Get(0, "sep"), Py.ToLong(a.Get(1, "maxsplit", -1L)), fromRight: false);
            case "rsplit": return Split(s, a.Get(0, "sep"), Py.ToLong(a.Get(1, "maxsplit", -1L)), fromRight: true);
            case "splitlines": return SplitLines(s, Py.Truthy(a.Get(0, "keepends", false))).Cast<object?>().ToList();
            case "upper": return s.ToUpperInvariant();
            case "lower": return s.ToLowerInvariant();
            case "title": return PyTitle(s);
            case "capitalize": return s.Length == 0 ? s : char.ToUpperInvariant(s[0]) + s[1..].ToLowerInvariant();
            case "replace":
                return Replace(s, Py.Str(a.Required(0, "old")), Py.Str(a.Required(1, "new")), Py.ToLong(a.Get(2, "count", -1L)));
            case "find": return (long)CodePointIndex(s, s.IndexOf(ReqStr(a, "sub"), StringComparison.Ordinal));
            case "rfind": return (long)CodePointIndex(s, s.LastIndexOf(ReqStr(a, "sub"), StringComparison.Ordinal));
            case "index" or "rindex":
            {
                var sub = ReqStr(a, "sub");
                int i = name == "index" ? s.IndexOf(sub, StringComparison.Ordinal) : s.LastIndexOf(sub, StringComparison.Ordinal);
                return i >= 0 ? (long)CodePointIndex(s, i) : throw new JinjaError("substring not found");
            }
            case "count":
            {
                var sub = ReqStr(a, "sub");
                if (sub.Length == 0) return Py.Len(s) + 1;
                long n = 0;
                for (int i = s.IndexOf(sub, StringComparison.Ordinal); i >= 0; i = s.IndexOf(sub, i + sub.Length, StringComparison.Ordinal)) n++;
                return n;
            }
            case "join": return string.Join(s, Py.Iterate(a.Required(0, "iterable")).Select(x =>
                x as string ?? throw new JinjaError($"sequence item: expected str instance, {Py.TypeName(x)} found")));
            case "format": return Format.StrFormat(s, a);
            case "removeprefix": { var p = ReqStr(a, "prefix"); return s.StartsWith(p, StringComparison.Ordinal) ? s[p.Length..] : s; }
            case "removesuffix": { var p = ReqStr(a, "suffix"); return p.Length > 0 && s.EndsWith(p, StringComparison.Ordinal) ? s[..^p.Length] : s; }
            case "isdigit": return s.Length > 0 && s.All(char.IsDigit);
            case "isalpha": return s.Length > 0 && s.All(char.IsLetter);
            case "isalnum": return s.Length > 0 && s.All(char.IsLetterOrDigit);
            case "isspace": return s.Length > 0 && s.All(Py.IsSpace);
            case "islower": return s.Any(char.IsLower) && !s.Any(c => char.IsUpper(c) || char.GetUnicodeCategory(c) == System.Globalization.UnicodeCategory.TitlecaseLetter);
            case "isupper": return s.Any(char.IsUpper) && !s.Any(c => char.IsLower(c) || char.GetUnicodeCategory(c) == System.Globalization.UnicodeCategory.TitlecaseLetter);
        }
        throw new JinjaError($"the string method '{name}' is not supported in chat templates");
    }

    private static string ReqStr(Args a, string name) =>
        a.Required(0, name) as string ?? throw new JinjaError($"must be str, not {Py.TypeName(a.Get(0, name))}");

    private static int CodePointIndex(string s, int utf16Index) =>
        utf16Index <= 0 ? utf16Index : utf16Index - s[..utf16Index].Count(char.IsLowSurrogate);

    public static string Replace(string s, string old, string replacement, long count)
    {
        if (count < 0) count = long.MaxValue;
        var sb = new StringBuilder();
        if (old.Length == 0)
        {
            // Python inserts the replacement before every code point and at the end.
            var cps = Py.CodePoints(s);
            long n = 0;
            foreach (var cp in cps)
            {
                if (n++ < count) sb.Append(replacement);
                sb.Append(cp);
            }
            if (n < count) sb.Append(replacement);
            return sb.ToString();
        }
        int pos = 0;
        for (long done = 0; done < count; done++)
        {
            int i = s.IndexOf(old, pos, StringComparison.Ordinal);
            if (i < 0) break;
            sb.Append(s, pos, i - pos).Append(replacement);
            pos = i + old.Length;
        }
        return sb.Append(s, pos, s.Length - pos).ToString();
    }

    private static List<object?> Split(string s, object? sepArg, long maxsplit, bool fromRight)
    {
        if (maxsplit < 0) maxsplit = long.MaxValue;
        var parts = new List<string>();
        if (sepArg is null)
        {
            // Runs of whitespace separate; leading/trailing whitespace yields no empty parts.
            var words = new List<(int Start, int End)>();
            int i = 0;
            while (i < s.Length)
            {
                while (i < s.Length && Py.IsSpace(s[i])) i++;
                if (i >= s.Length) break;
                int st = i;
                while (i < s.Length && !Py.IsSpace(s[i])) i++;
                words.Add((st, i));
            }
            if (words.Count == 0) return new();
            if (words.Count - 1 <= maxsplit) return words.Select(w => (object?)s[w.Start..w.End]).ToList();
            int keep = (int)maxsplit;
            if (!fromRight)
            {
                var head = words.Take(keep).Select(w => (object?)s[w.Start..w.End]).ToList();
                head.Add(Py.RStrip(s[words[keep].Start..]));
                return head;
            }
            var tail = words.Skip(words.Count - keep).Select(w => (object?)s[w.Start..w.End]).ToList();
            tail.Insert(0, Py.Strip(s[..words[words.Count - keep - 1].End], null, true, false));
            return tail;
        }
        var sep = sepArg as string ?? throw new JinjaError($"must be str or None, not {Py.TypeName(sepArg)}");
        if (sep.Length == 0) throw new JinjaError("empty separator");
        var all = s.Split(sep);
        if (all.Length - 1 <= maxsplit) return all.Cast<object?>().ToList();
        int k = (int)maxsplit;
        if (!fromRight)
        {
            var head = all.Take(k).Cast<object?>().ToList();
            head.Add(string.Join(sep, all.Skip(k)));
            return head;
        }
        var rest = all.Skip(all.Length - k).Cast<object?>().ToList();
        rest.Insert(0, string.Join(sep, all.Take(all.Length - k)));
        return rest;
    }

    /// <summary>Python's str.splitlines (all of Python's line boundaries).</summary>
    public static List<string> SplitLines(string s, bool keepEnds = false)
    {
        var lines = new List<string>();
        int start = 0, i = 0;
        while (i < s.Length)
        {
            char c = s[i];
            int eol = c == '\r' && i + 1 < s.Length && s[i + 1] == '\n' ? 2
                : c is '\n' or '\r' or '\v' or '\f' or '\x1c' or '\x1d' or '\x1e' or '\x85' or '\u2028' or '\u2029' ? 1 : 0;
            if (eol == 0) { i++; continue; }
            lines.Add(s[start..(keepEnds ? i + eol : i)]);
            i += eol;
            start = i;
        }
        if (start < s.Length) lines.Add(s[start..]);
        return lines;
    }

    /// <summary>Python's str.title: a cased letter after an uncased character starts a word.</summary>
    private static string PyTitle(string s)
    {
        var sb = new StringBuilder(s.Length);
        bool prevCased = false;
        foreach (var c in s)
        {
            bool cased = char.IsUpper(c) || char.IsLower(c) || char.GetUnicodeCategory(c) == System.Globalization.UnicodeCategory.TitlecaseLetter;
            sb.Append(!cased ? c : prevCased ? char.ToLowerInvariant(c) : char.ToUpperInvariant(c));
            prevCased = cased;
        }
        return sb.ToString();
    }
}
