using System.Globalization;
using System.Text;

namespace PeftSharp.Quantization;

/// <summary>What Python's <c>json.dumps</c> writes with default separators (", " and ": "), for the values bnb packs.</summary>
internal static class PyJson
{
    public static string Dumps(IEnumerable<KeyValuePair<string, object>> fields)
    {
        var sb = new StringBuilder("{");
        bool first = true;
        foreach (var (k, v) in fields)
        {
            if (!first) sb.Append(", ");
            first = false;
            sb.Append(String(k)).Append(": ").Append(Value(v));
        }
        return sb.Append('}').ToString();
    }

    static string Value(object v) => v switch
    {
        string s => String(s),
        int i => i.ToString(CultureInfo.InvariantCulture),
        long l => l.ToString(CultureInfo.InvariantCulture),
        double d => Float(d),
        long[] a => "[" + string.Join(", ", a.Select(x => x.ToString(CultureInfo.InvariantCulture))) + "]",
        _ => throw new ArgumentException($"cannot write {v.GetType().Name} as Python JSON"),
    };

    static string String(string s)
    {
        // bnb's strings are ASCII identifiers; escape the JSON specials anyway.
        var sb = new StringBuilder("\"");
        foreach (var c in s)
        {
            if (c == '"' || c == '\\') sb.Append('\\').Append(c);
            else if (c < 0x20 || c > 0x7e) sb.Append($"\\u{(int)c:x4}");
            else sb.Append(c);
        }
        return sb.Append('"').ToString();
    }

    /// <summary>Python's <c>repr(float)</c>: shortest round-trip digits, exponent form below 1e-4 and from 1e16.</summary>
    public static string Float(double d)
    {
        if (double.IsNaN(d)) return "NaN";
        if (double.IsInfinity(d)) return d > 0 ? "Infinity" : "-Infinity";
        if (d == 0) return double.IsNegative(d) ? "-0.0" : "0.0";
        var shortest = d.ToString("R", CultureInfo.InvariantCulture);
        string sign = d < 0 ? "-" : "";
        // Digits and decimal exponent of the shortest representation.
        string mant = shortest.TrimStart('-');
        int exp = 0;
        int ePos = mant.IndexOfAny(new[] { 'E', 'e' });
        if (ePos >= 0) { exp = int.Parse(mant[(ePos + 1)..], CultureInfo.InvariantCulture); mant = mant[..ePos]; }
        int dot = mant.IndexOf('.');
        string digits = dot >= 0 ? mant.Remove(dot, 1) : mant;
        int intLen = dot >= 0 ? dot : mant.Length;
        int lead = digits.Length - digits.TrimStart('0').Length;
        digits = digits.TrimStart('0').TrimEnd('0');
        if (digits.Length == 0) digits = "0";
        int sciExp = intLen - lead - 1 + exp; // value = 0.d1d2... * 10^(sciExp+1)
        if (sciExp < -4 || sciExp >= 16)
        {
            string m = digits.Length == 1 ? digits : digits[0] + "." + digits[1..];
            return $"{sign}{m}e{(sciExp < 0 ? "-" : "+")}{Math.Abs(sciExp):00}";
        }
        if (sciExp < 0) return $"{sign}0.{new string('0', -sciExp - 1)}{digits}";
        if (digits.Length <= sciExp + 1) return $"{sign}{digits}{new string('0', sciExp + 1 - digits.Length)}.0";
        return $"{sign}{digits[..(sciExp + 1)]}.{digits[(sciExp + 1)..]}";
    }
}
