using System.Text;

namespace PeftSharp.Tokenization;

/// <summary>An entry of tokenizer.json's <c>added_tokens</c>.</summary>
internal sealed record AddedToken(int Id, string Content, bool Special, bool Normalized, bool Lstrip, bool Rstrip, bool SingleWord);

/// <summary>
/// Finds added tokens in text, leftmost first and longest at a position (HF's matching), so their text is never
/// seen by the model. lstrip/rstrip swallow neighbouring whitespace; single_word requires word boundaries.
/// </summary>
internal sealed class AddedTokenMatcher
{
    readonly Dictionary<char, (string text, AddedToken token)[]> _byFirst;

    public AddedTokenMatcher(IEnumerable<(string text, AddedToken token)> tokens) =>
        _byFirst = tokens.Where(t => t.text.Length > 0).GroupBy(t => t.text[0])
            .ToDictionary(g => g.Key, g => g.OrderByDescending(t => t.text.Length).ToArray());

    public bool IsEmpty => _byFirst.Count == 0;

    /// <summary>Calls <paramref name="text"/> for the non-empty stretches between tokens and <paramref name="token"/> for each token, in order.</summary>
    public void Split(string s, Action<string, int> text, Action<AddedToken> token)
    {
        int emitted = 0; // end of what has been handed out
        for (int i = 0; i < s.Length; i++)
        {
            if (!_byFirst.TryGetValue(s[i], out var candidates)) continue;
            foreach (var (content, t) in candidates)
            {
                if (i + content.Length > s.Length || string.CompareOrdinal(s, i, content, 0, content.Length) != 0) continue;
                int end = i + content.Length;
                if (t.SingleWord && (IsWordChar(s, i - 1) || IsWordChar(s, end))) continue;
                int start = i;
                if (t.Lstrip) while (start > emitted && char.IsWhiteSpace(s[start - 1])) start--;
                if (t.Rstrip) while (end < s.Length && char.IsWhiteSpace(s[end])) end++;
                if (start > emitted) text(s[emitted..start], emitted);
                token(t);
                emitted = end;
                i = end - 1;
                break;
            }
        }
        if (emitted < s.Length) text(s[emitted..], emitted);
    }

    static bool IsWordChar(string s, int i)
    {
        if (i < 0 || i >= s.Length) return false;
        Rune.DecodeFromUtf16(s.AsSpan(i), out var r, out _);
        return Rune.IsLetterOrDigit(r) || s[i] == '_';
    }
}
