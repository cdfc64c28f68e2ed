using static TorchSharp.torch;

namespace PeftSharp.Inference;

/// <summary>
/// Constrained decoding for JSON objects: a token is allowed only if the text it adds keeps the sequence's text a
/// prefix of a JSON object (<see cref="JsonPrefix"/>); eos only once the object has closed. Each token's text is
/// decoded once per vocabulary. Tokens that decode to part of a character (a lone UTF-8 byte) are never allowed,
/// so non-ASCII text appears only through tokens that hold whole characters.
/// </summary>
public sealed class JsonConstraint
{
    readonly string?[] _pieces;

    /// <param name="pieces">Each token id's text (null or empty: never allowed).</param>
    public JsonConstraint(IReadOnlyList<string?> pieces) => _pieces = pieces.ToArray();

    /// <summary>
    /// Token texts from a decoder: each token is decoded after a one-letter anchor token and the anchor's text
    /// removed, so decoders that drop a leading space at the start of a text (SentencePiece) give the text the
    /// token adds mid-sequence.
    /// </summary>
    public static JsonConstraint FromDecoder(int vocabSize, Func<IReadOnlyList<int>, string> decode)
    {
        int anchor = -1;
        string anchorText = "";
        for (int id = 0; id < Math.Min(vocabSize, 4096) && anchor < 0; id++)
        {
            var t = decode(new[] { id });
            if (t.Length == 1 && char.IsAsciiLetter(t[0])) (anchor, anchorText) = (id, t);
        }
        var pieces = new string?[vocabSize];
        for (int id = 0; id < vocabSize; id++)
        {
            var text = anchor >= 0 ? decode(new[] { anchor, id }) : decode(new[] { id });
            if (anchor >= 0) text = text.StartsWith(anchorText, StringComparison.Ordinal) ? text[anchorText.Length..] : decode(new[] { id });
            pieces[id] = text.Length == 0 || text.Contains('\uFFFD') ? null : text;
        }
        return new JsonConstraint(pieces);
    }

    /// <summary>The state after <paramref name="token"/> (unchanged for a token outside the constraint, which <see cref="Disallowed"/> never lets through).</summary>
    public JsonPrefix Advance(JsonPrefix state, int token) =>
        token < _pieces.Length && _pieces[token] is { } p && state.Advance(p) is { } next ? next : state;

    /// <summary>[1, vocab] true where a token is not allowed after <paramref name="state"/>.</summary>
    public Tensor Disallowed(JsonPrefix state, IReadOnlySet<int> eos, Device device, long vocab)
    {
        var mask = new bool[vocab];
        bool any = false;
        for (long id = 0; id < vocab; id++)
        {
            bool allowed = id < _pieces.Length && _pieces[id] is { } p && !eos.Contains((int)id) && state.Advance(p) is not null;
            mask[id] = !allowed;
            any |= allowed;
        }
        // eos ends the sequence once the object closed, or when nothing else can continue it.
        if (state.Complete || !any)
            foreach (var e in eos) if (e < vocab) mask[e] = false;
        return tensor(mask, new long[] { 1, vocab }).to(device);
    }
}
