namespace PeftSharp.Inference;

/// <summary>
/// HF's StopStringCriteria on decoded text: a row stops when a stop string occurs in its text (prompt
/// included) and ends inside the newest token, so a string spanning several tokens counts and one that
/// was already in the prompt does not. Only the last (longest stop string + 1) tokens are decoded, since
/// each token adds at least one character; the extra token absorbs a decoder's leading-space trimming.
/// </summary>
internal sealed class StopStringMatcher
{
    readonly IReadOnlyList<string> _stops;
    readonly Func<IReadOnlyList<int>, string>? _decode;
    readonly int _window;

    public StopStringMatcher(IReadOnlyList<string> stops, Func<IReadOnlyList<int>, string>? decode)
    {
        _stops = stops;
        _decode = decode;
        _window = stops.Count == 0 ? 0 : stops.Max(s => s.Length) + 1;
    }

    public bool Active => _stops.Count > 0 && _decode is not null;

    public bool Matches(IReadOnlyList<int> tokens)
    {
        if (!Active || tokens.Count == 0) return false;
        var tail = tokens.Skip(Math.Max(0, tokens.Count - _window)).ToList();
        var text = _decode!(tail);
        int before = _decode(tail.Take(tail.Count - 1).ToList()).Length;
        foreach (var stop in _stops)
        {
            // The earliest occurrence that ends after the text the older tokens already gave.
            int from = Math.Max(0, before - stop.Length + 1);
            if (from <= text.Length && text.IndexOf(stop, from, StringComparison.Ordinal) >= 0) return true;
        }
        return false;
    }
}
