namespace PeftSharp.Inference;

/// <summary>
/// Streamed text of a growing token list, like HF's TextStreamer: each call returns the text added since
/// the last one. An incomplete character (U+FFFD at the end) waits for the next token unless the row is done.
/// </summary>
public sealed class IncrementalDetokenizer
{
    readonly Func<IReadOnlyList<int>, string> _decode;
    int _printed;

    public IncrementalDetokenizer(Func<IReadOnlyList<int>, string> decode) => _decode = decode;

    public string Delta(IReadOnlyList<int> tokens, bool final)
    {
        var text = _decode(tokens);
        if (!final && text.EndsWith('\uFFFD')) return "";
        var delta = text.Length > _printed ? text[_printed..] : "";
        _printed = Math.Max(_printed, text.Length);
        return delta;
    }
}
