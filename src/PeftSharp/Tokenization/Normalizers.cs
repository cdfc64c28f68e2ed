using System.Globalization;
using System.Text;
using System.Text.Json;
using System.Text.RegularExpressions;

namespace PeftSharp.Tokenization;

/// <summary>A tokenizer.json <c>normalizer</c>: rewrites a text segment before pre-tokenization.</summary>
internal abstract class Normalizer
{
    public abstract string Apply(string text);

    public static Normalizer? Parse(JsonElement? json, string file, string where = "normalizer")
    {
        if (json is not { } e) return null;
        var type = e.Type(file, where);
        return type switch
        {
            "Sequence" => new SequenceNormalizer(e.Array("normalizers", file, where)
                .Select((n, i) => Parse(n, file, $"{where}.normalizers[{i}]")!).ToArray()),
            "NFC" => new FuncNormalizer(s => UnicodeText.Normalize(s, NormalizationForm.FormC)),
            "NFD" => new FuncNormalizer(s => UnicodeText.Normalize(s, NormalizationForm.FormD)),
            "NFKC" => new FuncNormalizer(s => UnicodeText.Normalize(s, NormalizationForm.FormKC)),
            "NFKD" => new FuncNormalizer(s => UnicodeText.Normalize(s, NormalizationForm.FormKD)),
            "Lowercase" => new FuncNormalizer(s => s.ToLowerInvariant()),
            "StripAccents" => new FuncNormalizer(UnicodeText.RemoveNonSpacingMarks),
            "Strip" => Strip(e.Bool("strip_left", true), e.Bool("strip_right", true)),
            "Prepend" => Prepend(e.Str("prepend", file, where)),
            "Replace" => Replace(e, file, where),
            "BertNormalizer" => new BertNormalizer(e.Bool("clean_text", true), e.Bool("handle_chinese_chars", true),
                e.Opt("strip_accents") is { } sa ? sa.GetBoolean() : null, e.Bool("lowercase", true)),
            _ => throw new PeftFormatException(file, $"unsupported normalizer type '{type}' at '{where}'"),
        };
    }

    static FuncNormalizer Strip(bool left, bool right) => new(s => left && right ? s.Trim() : left ? s.TrimStart() : right ? s.TrimEnd() : s);

    // HF prepends only to non-empty text, so an empty segment between added tokens stays empty.
    static FuncNormalizer Prepend(string prefix) => new(s => s.Length == 0 ? s : prefix + s);

    static FuncNormalizer Replace(JsonElement e, string file, string where)
    {
        var (pattern, isRegex) = e.Pattern(file, where);
        var content = e.Str("content", file, where);
        if (!isRegex) return new(s => s.Replace(pattern, content, StringComparison.Ordinal));
        var regex = TokenizerRegex.Create(pattern, file, where);
        var replacement = content.Replace("$", "$$");
        return new(s => TokenizerRegex.Replace(regex, s, replacement));
    }
}

internal sealed class FuncNormalizer(Func<string, string> f) : Normalizer
{
    public override string Apply(string text) => f(text);
}

internal sealed class SequenceNormalizer(Normalizer[] steps) : Normalizer
{
    public override string Apply(string text)
    {
        foreach (var s in steps) text = s.Apply(text);
        return text;
    }
}

/// <summary>
/// BERT's normalizer, in HF's order: drop NUL/U+FFFD/control chars and turn whitespace into spaces,
/// put spaces around CJK ideographs, strip accents (defaults to <c>lowercase</c>), lowercase.
/// </summary>
internal sealed class BertNormalizer(bool cleanText, bool chineseChars, bool? stripAccents, bool lowercase) : Normalizer
{
    public override string Apply(string text)
    {
        if (cleanText || chineseChars)
        {
            var sb = new StringBuilder(text.Length + 8);
            foreach (var r in text.EnumerateRunes())
            {
                if (cleanText)
                {
                    if (r.Value is 0 or 0xFFFD || UnicodeText.IsControl(r)) continue;
                    if (UnicodeText.IsWhiteSpace(r)) { sb.Append(' '); continue; }
                }
                if (chineseChars && UnicodeText.IsCjkIdeograph(r.Value)) sb.Append(' ').Append(r.ToString()).Append(' ');
                else sb.Append(r.ToString());
            }
            text = sb.ToString();
        }
        if (stripAccents ?? lowercase) text = UnicodeText.RemoveNonSpacingMarks(UnicodeText.Normalize(text, NormalizationForm.FormD));
        if (lowercase) text = text.ToLowerInvariant();
        return text;
    }
}

/// <summary>Unicode predicates as HF's Rust code defines them (on code points, not UTF-16 units).</summary>
internal static class UnicodeText
{
    public static string Normalize(string s, NormalizationForm form) => UnicodeNormalization.Normalize(s, form);

    public static string RemoveNonSpacingMarks(string s)
    {
        var sb = new StringBuilder(s.Length);
        foreach (var r in s.EnumerateRunes())
            if (Rune.GetUnicodeCategory(r) != UnicodeCategory.NonSpacingMark) sb.Append(r.ToString());
        return sb.ToString();
    }

    public static bool IsWhiteSpace(Rune r) => r.Value is '\t' or '\n' or '\r' || Rune.IsWhiteSpace(r);

    /// <summary>Rust's <c>char::is_other</c> (Cc, Cf, Cs, Co, Cn) minus \t \n \r.</summary>
    public static bool IsControl(Rune r)
    {
        if (r.Value is '\t' or '\n' or '\r') return false;
        return Rune.GetUnicodeCategory(r) is UnicodeCategory.Control or UnicodeCategory.Format or UnicodeCategory.Surrogate
            or UnicodeCategory.PrivateUse or UnicodeCategory.OtherNotAssigned;
    }

    public static bool IsCjkIdeograph(int c) =>
        c is >= 0x4E00 and <= 0x9FFF or >= 0x3400 and <= 0x4DBF or >= 0x20000 and <= 0x2A6DF or >= 0x2A700 and <= 0x2B73F
            or >= 0x2B740 and <= 0x2B81F or >= 0x2B920 and <= 0x2CEAF or >= 0xF900 and <= 0xFAFF or >= 0x2F800 and <= 0x2FA1F;

    /// <summary>BERT punctuation: any ASCII punctuation (so also $ + &lt; = &gt; ^ ` |) or a Unicode P* char.</summary>
    public static bool IsBertPunctuation(Rune r)
    {
        int c = r.Value;
        if (c is >= 33 and <= 47 or >= 58 and <= 64 or >= 91 and <= 96 or >= 123 and <= 126) return true;
        return Rune.GetUnicodeCategory(r) is UnicodeCategory.ConnectorPunctuation or UnicodeCategory.DashPunctuation
            or UnicodeCategory.OpenPunctuation or UnicodeCategory.ClosePunctuation or UnicodeCategory.InitialQuotePunctuation
            or UnicodeCategory.FinalQuotePunctuation or UnicodeCategory.OtherPunctuation;
    }
}
