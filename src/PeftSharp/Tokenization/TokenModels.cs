using System.Collections.Concurrent;
using System.Text;
using Microsoft.ML.Tokenizers;

namespace PeftSharp.Tokenization;

/// <summary>A tokenizer.json <c>model</c>: turns one pre-tokenized piece into ids.</summary>
internal abstract class TokenModel
{
    public required IReadOnlyDictionary<string, int> Vocab { get; init; }
    public required string[] IdToToken { get; init; }

    public abstract void Encode(string piece, List<int> ids);

    public static string[] InvertVocab(IReadOnlyDictionary<string, int> vocab)
    {
        var tokens = new string[vocab.Count == 0 ? 0 : vocab.Values.Max() + 1];
        foreach (var (t, id) in vocab) tokens[id] = t;
        return tokens;
    }
}

/// <summary>
/// Byte-level BPE (GPT-2, Llama-3, Qwen) on Microsoft.ML.Tokenizers' <see cref="BpeTokenizer"/>. The pieces
/// arrive already split (normalizer and pre-tokenizer are ours), so the library only runs the merges.
/// </summary>
internal sealed class ByteLevelBpeModel : TokenModel
{
    readonly BpeTokenizer _bpe;
    readonly bool _ignoreMerges;

    public ByteLevelBpeModel(Dictionary<string, int> vocab, IEnumerable<string> merges, bool ignoreMerges)
    {
        _ignoreMerges = ignoreMerges;
        _bpe = BpeTokenizer.Create(new BpeOptions(vocab) { Merges = merges, ByteLevel = true });
    }

    public override void Encode(string piece, List<int> ids)
    {
        // ignore_merges (Llama-3): a piece that is itself a vocabulary entry is emitted whole.
        if (_ignoreMerges && Vocab.TryGetValue(ByteLevel.Encode(piece), out var whole)) { ids.Add(whole); return; }
        ids.AddRange(_bpe.EncodeToIds(piece, considerPreTokenization: false, considerNormalization: false));
    }
}

/// <summary>
/// BPE over chars with SentencePiece's byte fallback (Llama-2, Mistral): a char missing from the vocabulary
/// becomes one <c>&lt;0xNN&gt;</c> token per UTF-8 byte, then merges run by rank (lowest first, leftmost on ties),
/// exactly as HF's BPE model. ML.Tokenizers' BpeTokenizer has no byte fallback, hence this loop.
/// </summary>
internal sealed class ByteFallbackBpeModel : TokenModel
{
    readonly Dictionary<long, (int rank, int id)> _merges;
    readonly int[] _byteIds; // -1 where <0xNN> is missing
    readonly int? _unkId;
    readonly bool _byteFallback, _fuseUnk, _ignoreMerges, _splitAtWordStarts;
    readonly ConcurrentDictionary<string, int[]> _cache = new();
    const int CacheLimit = 100_000, CachedWordMaxLength = 64;
    const char Metaspace = '\u2581';

    public ByteFallbackBpeModel(Dictionary<string, int> vocab, IReadOnlyList<(string a, string b)> merges, string? unk,
        bool byteFallback, bool fuseUnk, bool ignoreMerges, string file)
    {
        _byteFallback = byteFallback;
        _fuseUnk = fuseUnk;
        _ignoreMerges = ignoreMerges;
        _unkId = unk is not null && vocab.TryGetValue(unk, out var u) ? u : null;
        _byteIds = Enumerable.Range(0, 256).Select(b => vocab.TryGetValue($"<0x{b:X2}>", out var id) ? id : -1).ToArray();
        _merges = new Dictionary<long, (int, int)>(merges.Count);
        for (int rank = 0; rank < merges.Count; rank++)
        {
            var (a, b) = merges[rank];
            if (!vocab.TryGetValue(a, out var ia) || !vocab.TryGetValue(b, out var ib) || !vocab.TryGetValue(a + b, out var merged))
                throw new PeftFormatException(file, $"model.merges[{rank}] ('{a}' '{b}') uses a token missing from model.vocab");
            _merges.TryAdd(Key(ia, ib), (rank, merged));
        }
        // SentencePiece vocabularies (split_by_whitespace) only hold "▁…▁" + "text without ▁" pieces; then no token
        // can span "x▁", so a segment may be cut before every word start and words cached, with identical ids.
        _splitAtWordStarts = vocab.Keys.All(t => t.AsSpan().TrimStart(Metaspace).IndexOf(Metaspace) < 0);
    }

    static long Key(int a, int b) => ((long)a << 32) | (uint)b;

    public override void Encode(string piece, List<int> ids)
    {
        if (!_splitAtWordStarts) { EncodeWord(piece, ids); return; }
        int start = 0;
        for (int i = 1; i <= piece.Length; i++)
        {
            if (i < piece.Length && !(piece[i] == Metaspace && piece[i - 1] != Metaspace)) continue;
            var word = piece[start..i];
            start = i;
            if (word.Length > CachedWordMaxLength) { EncodeWord(word, ids); continue; }
            if (!_cache.TryGetValue(word, out var cached))
            {
                var list = new List<int>();
                EncodeWord(word, list);
                cached = list.ToArray();
                if (_cache.Count < CacheLimit) _cache.TryAdd(word, cached);
            }
            ids.AddRange(cached);
        }
    }

    void EncodeWord(string piece, List<int> ids)
    {
        if (piece.Length == 0) return;
        if (_ignoreMerges && Vocab.TryGetValue(piece, out var whole)) { ids.Add(whole); return; }

        var sym = new List<int>(piece.Length);
        Span<byte> buf = stackalloc byte[4];
        foreach (var r in piece.EnumerateRunes())
        {
            if (Vocab.TryGetValue(r.ToString(), out var id)) { sym.Add(id); continue; }
            int n = r.EncodeToUtf8(buf);
            bool bytesKnown = _byteFallback;
            for (int i = 0; i < n && bytesKnown; i++) bytesKnown = _byteIds[buf[i]] >= 0;
            if (bytesKnown) { for (int i = 0; i < n; i++) sym.Add(_byteIds[buf[i]]); continue; }
            if (_unkId is not { } unk)
                throw new PeftSharpException($"tokenizer: '{r}' (U+{r.Value:X4}) is not in the vocabulary and the model has no unk_token");
            if (!(_fuseUnk && sym.Count > 0 && sym[^1] == unk)) sym.Add(unk);
        }
        MergeAll(sym);
        foreach (var s in sym) if (s >= 0) ids.Add(s);
    }

    /// <summary>Applies merges in rank order; merged-away slots become -1 and are linked past.</summary>
    void MergeAll(List<int> sym)
    {
        int n = sym.Count;
        if (n < 2) return;
        var prev = new int[n];
        var next = new int[n];
        for (int i = 0; i < n; i++) { prev[i] = i - 1; next[i] = i + 1 < n ? i + 1 : -1; }
        var queue = new PriorityQueue<(int pos, int left, int right), (int rank, int pos)>();
        void Push(int pos)
        {
            int nx = next[pos];
            if (nx >= 0 && _merges.TryGetValue(Key(sym[pos], sym[nx]), out var m)) queue.Enqueue((pos, sym[pos], sym[nx]), (m.rank, pos));
        }
        for (int i = 0; i + 1 < n; i++) Push(i);
        while (queue.TryDequeue(out var item, out _))
        {
            var (pos, left, right) = item;
            int nx = next[pos];
            if (sym[pos] != left || nx < 0 || sym[nx] != right) continue; // stale entry
            sym[pos] = _merges[Key(left, right)].id;
            sym[nx] = -1;
            next[pos] = next[nx];
            if (next[pos] >= 0) prev[next[pos]] = pos;
            if (prev[pos] >= 0) Push(prev[pos]);
            Push(pos);
        }
    }
}

/// <summary>
/// WordPiece (BERT) on Microsoft.ML.Tokenizers' <see cref="WordPieceTokenizer"/>, fed one word at a time by our
/// BERT normalizer and pre-tokenizer (the library's own BERT pipeline drops emoji and does not isolate &lt;|…|&gt;).
/// </summary>
internal sealed class WordPieceModel : TokenModel
{
    readonly WordPieceTokenizer _wp;
    readonly int _unkId, _maxChars;

    public WordPieceModel(string[] idToToken, string unk, string prefix, int maxChars)
    {
        _maxChars = maxChars;
        var text = string.Join("\n", idToToken) + "\n";
        using var stream = new MemoryStream(Encoding.UTF8.GetBytes(text));
        _wp = WordPieceTokenizer.Create(stream, new WordPieceOptions
        {
            UnknownToken = unk, ContinuingSubwordPrefix = prefix, MaxInputCharsPerWord = maxChars,
            PreTokenizer = null, Normalizer = null,
        });
        _unkId = _wp.UnknownTokenId;
    }

    public override void Encode(string word, List<int> ids)
    {
        // HF counts chars (code points) against max_input_chars_per_word; over the limit the word is one unk.
        int chars = 0;
        foreach (var _ in word.EnumerateRunes()) chars++;
        if (chars > _maxChars) { ids.Add(_unkId); return; }
        ids.AddRange(_wp.EncodeToIds(word, considerPreTokenization: false, considerNormalization: false));
    }
}
