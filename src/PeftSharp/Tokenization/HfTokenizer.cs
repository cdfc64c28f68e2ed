using PeftSharp.Runtime;
using System.Text.Json;

namespace PeftSharp.Tokenization;

/// <summary>
/// A Hugging Face tokenizer folder (<c>tokenizer.json</c> + <c>tokenizer_config.json</c> +
/// <c>special_tokens_map.json</c>) that gives the same ids and decoded text as transformers' fast tokenizer:
/// added tokens, normalizer, pre-tokenizer, model (byte-level BPE, byte-fallback BPE, WordPiece),
/// post-processor and decoder all follow the file. Thread-safe after loading.
/// </summary>
public sealed class HfTokenizer
{
    public const string TokenizerFile = "tokenizer.json";
    public const string ConfigFile = "tokenizer_config.json";
    public const string SpecialTokensMapFile = "special_tokens_map.json";
    public const string ChatTemplateFile = "chat_template.jinja";

    readonly TokenModel _model;
    readonly Normalizer? _normalizer;
    readonly PreTokenizer? _preTokenizer;
    readonly PostProcessor _post;
    readonly Decoder? _decoder;
    readonly AddedTokenMatcher _rawAdded, _normalizedAdded;
    readonly Dictionary<int, AddedToken> _addedById;
    readonly bool _cleanUpSpaces;

    /// <summary>The folder it was loaded from.</summary>
    public string Directory { get; }
    /// <summary>Every added token (special or not) by its text.</summary>
    public IReadOnlyDictionary<string, int> AddedTokens { get; }
    /// <summary>transformers' <c>vocab_size</c>: the model's vocabulary without added tokens.</summary>
    public int VocabSize => _model.Vocab.Count;
    /// <summary>transformers' <c>len(tokenizer)</c>: model vocabulary plus added tokens not in it.</summary>
    public int TotalVocabSize { get; }

    public string? BosToken { get; }
    public string? EosToken { get; }
    public string? PadToken { get; }
    public string? UnkToken { get; }
    public int? BosTokenId => BosToken is null ? null : TokenToId(BosToken);
    public int? EosTokenId => EosToken is null ? null : TokenToId(EosToken);
    public int? PadTokenId => PadToken is null ? null : TokenToId(PadToken);
    public int? UnkTokenId => UnkToken is null ? null : TokenToId(UnkToken);
    /// <summary>tokenizer_config's <c>add_bos_token</c>; when absent, whether add_special_tokens puts the BOS first.</summary>
    public bool AddBosToken { get; }
    /// <summary>tokenizer_config's <c>add_eos_token</c>; when absent, whether add_special_tokens puts the EOS last.</summary>
    public bool AddEosToken { get; }
    /// <summary>The default chat template (Jinja source), or null when the folder has none.</summary>
    public string? ChatTemplate { get; }
    /// <summary>All chat templates by name (a plain-string template is named "default").</summary>
    public IReadOnlyDictionary<string, string> ChatTemplates { get; }
    /// <summary>tokenizer_config.json as read (empty object when absent), for settings this class does not interpret.</summary>
    public JsonElement Config { get; }

    HfTokenizer(string dir, TokenModel model, Normalizer? normalizer, PreTokenizer? preTokenizer, PostProcessor post,
        Decoder? decoder, List<AddedToken> added, TokenizerSettings settings)
    {
        Directory = dir;
        _model = model;
        _normalizer = normalizer;
        _preTokenizer = preTokenizer;
        _decoder = decoder;
        _addedById = added.GroupBy(t => t.Id).ToDictionary(g => g.Key, g => g.Last());
        AddedTokens = added.GroupBy(t => t.Content).ToDictionary(g => g.Key, g => g.Last().Id);
        TotalVocabSize = model.Vocab.Count + added.Count(t => !model.Vocab.ContainsKey(t.Content));
        // Without a normalizer every added token is matched on the raw text; otherwise HF matches
        // normalized:false tokens before normalizing and normalized:true ones (content normalized too) after.
        _rawAdded = new(added.Where(t => normalizer is null || !t.Normalized).Select(t => (t.Content, t)));
        _normalizedAdded = new(normalizer is null ? [] : added.Where(t => t.Normalized).Select(t => (normalizer.Apply(t.Content), t)));

        BosToken = settings.Bos; EosToken = settings.Eos; PadToken = settings.Pad; UnkToken = settings.Unk;
        _cleanUpSpaces = settings.CleanUpSpaces;
        ChatTemplate = settings.ChatTemplate;
        ChatTemplates = settings.ChatTemplates;
        Config = settings.Config;
        _post = settings.LlamaStyleTemplate is { } llama
            ? new PostProcessor(llama.bos && BosTokenId is { } b ? [b] : [], llama.eos && EosTokenId is { } e ? [e] : [])
            : post;
        AddBosToken = settings.AddBos ?? (BosTokenId is { } bos && _post.Prefix.FirstOrDefault(-1) == bos);
        AddEosToken = settings.AddEos ?? (EosTokenId is { } eos && _post.Suffix.LastOrDefault(-1) == eos);
    }

    /// <summary>Loads a tokenizer folder; errors name the file and field.</summary>
    public static HfTokenizer FromFolder(string dir) => HfTokenizerLoader.Load(dir);

    internal static HfTokenizer Create(string dir, TokenModel model, Normalizer? normalizer, PreTokenizer? preTokenizer,
        PostProcessor post, Decoder? decoder, List<AddedToken> added, TokenizerSettings settings) =>
        new(dir, model, normalizer, preTokenizer, post, decoder, added, settings);

    /// <summary><c>tokenizer(text, add_special_tokens=…).input_ids</c>.</summary>
    public IReadOnlyList<int> Encode(string text, bool addSpecialTokens = true)
    {
        ArgumentNullException.ThrowIfNull(text);
        // Checked before any work: a 4 MB prompt is refused, not tokenized in full and then found too long.
        if ((long)text.Length * 3 > ResourceLimits.MaxPromptBytes.Value)
            ResourceLimits.MaxPromptBytes.Check(System.Text.Encoding.UTF8.GetByteCount(text), "the text to tokenize");
        var ids = new List<int>(text.Length / 3 + 4);
        if (addSpecialTokens) ids.AddRange(_post.Prefix);
        var pieces = new List<string>();
        _rawAdded.Split(text, (segment, offset) =>
        {
            var normalized = _normalizer?.Apply(segment) ?? segment;
            if (_normalizedAdded.IsEmpty) EncodeSegment(normalized, offset == 0, ids, pieces);
            else _normalizedAdded.Split(normalized, (s, o) => EncodeSegment(s, offset == 0 && o == 0, ids, pieces), t => ids.Add(t.Id));
        }, t => ids.Add(t.Id));
        if (addSpecialTokens) ids.AddRange(_post.Suffix);
        return ids;
    }

    void EncodeSegment(string segment, bool atStart, List<int> ids, List<string> pieces)
    {
        if (segment.Length == 0) return;
        if (_preTokenizer is null) { _model.Encode(segment, ids); return; }
        pieces.Clear();
        _preTokenizer.Split(segment, atStart, pieces);
        foreach (var p in pieces) _model.Encode(p, ids);
    }

    /// <summary>
    /// <c>tokenizer.decode(ids, skip_special_tokens=…)</c>, with clean-up as the config says. Ids outside the
    /// vocabulary are skipped as HF's tokenizers do: models often have more embedding rows than tokens
    /// (Qwen pads to a multiple of 128), and a model may emit one of those.
    /// </summary>
    public string Decode(IEnumerable<int> ids, bool skipSpecialTokens = false)
    {
        var tokens = new List<string>();
        foreach (var id in ids)
        {
            if (_addedById.TryGetValue(id, out var added))
            {
                if (!(skipSpecialTokens && added.Special)) tokens.Add(added.Content);
            }
            else if (ModelTokenOrNull(id) is { } t) tokens.Add(t);
        }
        if (tokens.Count == 0) return "";
        var text = _decoder is null ? string.Join(" ", tokens) : string.Concat(_decoder.Apply(tokens));
        return _cleanUpSpaces ? Decoder.CleanUpTokenization(text) : text;
    }

    /// <summary><c>convert_ids_to_tokens</c>: vocabulary strings (<c>Ġworld</c>, <c>▁Hello</c>, <c>##ing</c>, <c>&lt;0x0A&gt;</c>).</summary>
    public IReadOnlyList<string> ConvertIdsToTokens(IEnumerable<int> ids) =>
        ids.Select(id => _addedById.TryGetValue(id, out var a) ? a.Content : ModelToken(id)).ToList();

    /// <summary>The id of a vocabulary or added token, or null.</summary>
    public int? TokenToId(string token) =>
        AddedTokens.TryGetValue(token, out var id) || _model.Vocab.TryGetValue(token, out id) ? id : null;

    /// <summary>True for added tokens marked special (what <c>skip_special_tokens</c> drops).</summary>
    public bool IsSpecial(int id) => _addedById.TryGetValue(id, out var t) && t.Special;

    string? ModelTokenOrNull(int id) => (uint)id < (uint)_model.IdToToken.Length ? _model.IdToToken[id] : null;

    string ModelToken(int id) =>
        ModelTokenOrNull(id) ??
            throw new PeftSharpException($"tokenizer ({Directory}): id {id} is not in the vocabulary (size {TotalVocabSize})");
}
