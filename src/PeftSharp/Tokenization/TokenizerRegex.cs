using System.Text.RegularExpressions;
using PeftSharp.Runtime;

namespace PeftSharp.Tokenization;

/// <summary>
/// Regexes from tokenizer.json (Split pre-tokenizers, Replace normalizers) come from a file: a pattern such as
/// <c>(a+)+$</c> must not hang. Patterns .NET's non-backtracking engine accepts (no lookarounds, backreferences or
/// atomic groups) run on it in linear time with the same matches; the others keep the backtracking engine under a
/// match timeout (<see cref="ResourceLimits.RegexTimeoutMs"/>).
/// </summary>
internal static class TokenizerRegex
{
    public static Regex Create(string pattern, string? file, string? where)
    {
        var timeout = TimeSpan.FromMilliseconds(ResourceLimits.RegexTimeoutMs.Value);
        try
        {
            try { return new Regex(pattern, RegexOptions.NonBacktracking | RegexOptions.CultureInvariant, timeout); }
            catch (NotSupportedException) { return new Regex(pattern, RegexOptions.Compiled | RegexOptions.CultureInvariant, timeout); }
        }
        catch (ArgumentException e)
        {
            throw new PeftFormatException(file, $"invalid regex at '{where ?? "pattern"}': {e.Message}");
        }
    }

    /// <summary>All matches, read eagerly so a timeout surfaces here as a limit error.</summary>
    public static List<Match> Matches(Regex regex, string text)
    {
        var list = new List<Match>();
        try
        {
            for (var m = regex.Match(text); m.Success; m = m.NextMatch()) list.Add(m);
        }
        catch (RegexMatchTimeoutException) { throw TimedOut(regex, text); }
        return list;
    }

    public static string Replace(Regex regex, string text, string replacement)
    {
        try { return regex.Replace(text, replacement); }
        catch (RegexMatchTimeoutException) { throw TimedOut(regex, text); }
    }

    static PeftLimitException TimedOut(Regex regex, string text) =>
        new($"tokenizer regex '{Shorten(regex.ToString())}' on {text.Length} characters", ResourceLimits.RegexTimeoutMs);

    static string Shorten(string s) => s.Length <= 60 ? s : s[..57] + "...";
}
