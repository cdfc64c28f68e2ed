using PeftSharp.IO;
using System.Text.Json;

namespace PeftSharp.Tokenization;

/// <summary>What tokenizer_config.json and special_tokens_map.json add on top of tokenizer.json.</summary>
internal sealed record TokenizerSettings(
    string? Bos, string? Eos, string? Pad, string? Unk, bool? AddBos, bool? AddEos, bool CleanUpSpaces,
    (bool bos, bool eos)? LlamaStyleTemplate, string? ChatTemplate, IReadOnlyDictionary<string, string> ChatTemplates,
    JsonElement Config);

internal static class HfTokenizerLoader
{
    // transformers' fast classes that rebuild the post-processor from add_bos_token / add_eos_token.
    static readonly string[] LlamaStyleClasses = ["LlamaTokenizer", "CodeLlamaTokenizer", "GemmaTokenizer"];

    public static HfTokenizer Load(string dir)
    {
        dir = HfHubCache.ResolveFolder(dir, "tokenizer");
        var file = Path.Combine(dir, HfTokenizer.TokenizerFile);
        try { return LoadChecked(dir, file); }
        // The parsers check the fields they know; any other shape mismatch (a string where a list belongs) still names the file.
        catch (Exception e) when (e is InvalidOperationException or KeyNotFoundException or FormatException or IndexOutOfRangeException or OverflowException)
        {
            throw new PeftFormatException(file, $"unexpected structure ({e.Message})", e);
        }
    }

    static HfTokenizer LoadChecked(string dir, string file)
    {
        if (!System.IO.Directory.Exists(dir)) throw new PeftFormatException(dir, "tokenizer folder not found");
        if (!File.Exists(file))
            throw new PeftFormatException(file, "missing: PeftSharp reads tokenizers from tokenizer.json (save the tokenizer with transformers' fast tokenizer to create it)");
        var root = ReadJson(file);

        var modelJson = root.Req("model", file, "$");
        var preTokenizer = PreTokenizer.Parse(root.Opt("pre_tokenizer"), file);
        var model = ParseModel(modelJson, preTokenizer?.ByteLevel ?? false, file);
        var added = root.Opt("added_tokens") is { } arr
            ? arr.EnumerateArray().Select((t, i) => ParseAdded(t, file, $"added_tokens[{i}]")).ToList()
            : [];
        var settings = ReadSettings(dir, model.Vocab);
        try
        {
            return HfTokenizer.Create(dir, model, Normalizer.Parse(root.Opt("normalizer"), file), preTokenizer,
                PostProcessor.Parse(root.Opt("post_processor"), file), Decoder.Parse(root.Opt("decoder"), file), added, settings);
        }
        catch (InvalidOperationException ex)
        {
            throw new PeftFormatException(file, $"inconsistent tokenizer: {ex.Message}", ex);
        }
    }

    static JsonElement ReadJson(string file)
    {
        try
        {
            using var doc = JsonDocument.Parse(File.ReadAllBytes(file));
            return doc.RootElement.Clone();
        }
        catch (JsonException ex)
        {
            throw new PeftFormatException(file, $"not valid JSON: {ex.Message}", ex);
        }
    }

    static AddedToken ParseAdded(JsonElement t, string file, string where)
    {
        var id = t.Req("id", file, where);
        if (id.ValueKind != JsonValueKind.Number) throw new PeftFormatException(file, $"field '{where}.id' must be a number");
        return new AddedToken(id.GetInt32(), t.Str("content", file, where), t.Bool("special", false), t.Bool("normalized", true),
            t.Bool("lstrip", false), t.Bool("rstrip", false), t.Bool("single_word", false));
    }

    static TokenModel ParseModel(JsonElement m, bool byteLevel, string file)
    {
        var type = m.OptStr("type") ?? (m.Opt("merges") is not null ? "BPE" : m.Opt("continuing_subword_prefix") is not null ? "WordPiece" : "?");
        var vocab = ParseVocab(m.Req("vocab", file, "model"), file);
        var idToToken = TokenModel.InvertVocab(vocab);
        switch (type)
        {
            case "BPE":
            {
                if (m.Opt("dropout") is { ValueKind: JsonValueKind.Number } d && d.GetDouble() > 0)
                    throw new PeftFormatException(file, "unsupported: model.dropout > 0 (BPE dropout is for training only)");
                if (!string.IsNullOrEmpty(m.OptStr("continuing_subword_prefix")) || !string.IsNullOrEmpty(m.OptStr("end_of_word_suffix")))
                    throw new PeftFormatException(file, "unsupported: BPE model.continuing_subword_prefix / end_of_word_suffix");
                var merges = ParseMerges(m, file);
                bool ignoreMerges = m.Bool("ignore_merges", false), byteFallback = m.Bool("byte_fallback", false);
                if (byteLevel && !byteFallback)
                    return new ByteLevelBpeModel(vocab, merges.Select(p => p.a + " " + p.b), ignoreMerges) { Vocab = vocab, IdToToken = idToToken };
                return new ByteFallbackBpeModel(vocab, merges, m.OptStr("unk_token"), byteFallback, m.Bool("fuse_unk", false), ignoreMerges, file)
                    { Vocab = vocab, IdToToken = idToToken };
            }
            case "WordPiece":
            {
                var unk = m.Str("unk_token", file, "model");
                if (!vocab.ContainsKey(unk)) throw new PeftFormatException(file, $"model.unk_token '{unk}' is not in model.vocab");
                if (idToToken.Any(t => t is null || t.Contains('\n')))
                    throw new PeftFormatException(file, "model.vocab of a WordPiece model must have ids 0..N-1 without gaps");
                return new WordPieceModel(idToToken, unk, m.OptStr("continuing_subword_prefix") ?? "##", m.Int("max_input_chars_per_word", 100))
                    { Vocab = vocab, IdToToken = idToToken };
            }
            default:
                throw new PeftFormatException(file, $"unsupported model.type '{type}' (supported: BPE, WordPiece)");
        }
    }

    static Dictionary<string, int> ParseVocab(JsonElement v, string file)
    {
        if (v.ValueKind != JsonValueKind.Object) throw new PeftFormatException(file, $"model.vocab must be an object of token → id, found {v.ValueKind}");
        var vocab = new Dictionary<string, int>();
        foreach (var p in v.EnumerateObject())
        {
            if (p.Value.ValueKind != JsonValueKind.Number || !p.Value.TryGetInt32(out var id) || id < 0)
                throw new PeftFormatException(file, $"model.vocab['{p.Name}'] must be a non-negative integer id");
            vocab[p.Name] = id;
        }
        return vocab;
    }

    // Merges are "a b" strings (GPT-2, Llama) or ["a", "b"] pairs (newer files, Qwen3).
    static List<(string a, string b)> ParseMerges(JsonElement m, string file)
    {
        var list = new List<(string, string)>();
        int i = 0;
        foreach (var e in m.Array("merges", file, "model"))
        {
            if (e.ValueKind == JsonValueKind.String)
            {
                var s = e.GetString()!;
                int sp = s.IndexOf(' ', 1);
                if (sp <= 0 || sp == s.Length - 1) throw new PeftFormatException(file, $"model.merges[{i}] '{s}' is not 'a b'");
                list.Add((s[..sp], s[(sp + 1)..]));
            }
            else if (e.ValueKind == JsonValueKind.Array && e.GetArrayLength() == 2 && e[0].ValueKind == JsonValueKind.String && e[1].ValueKind == JsonValueKind.String)
                list.Add((e[0].GetString()!, e[1].GetString()!));
            else throw new PeftFormatException(file, $"model.merges[{i}] must be \"a b\" or [\"a\", \"b\"]");
            i++;
        }
        return list;
    }

    static TokenizerSettings ReadSettings(string dir, IReadOnlyDictionary<string, int> vocab)
    {
        var configFile = Path.Combine(dir, HfTokenizer.ConfigFile);
        var config = File.Exists(configFile) ? ReadJson(configFile) : JsonDocument.Parse("{}").RootElement.Clone();
        if (config.ValueKind != JsonValueKind.Object) throw new PeftFormatException(configFile, "must be a JSON object");
        var mapFile = Path.Combine(dir, HfTokenizer.SpecialTokensMapFile);
        var map = File.Exists(mapFile) ? ReadJson(mapFile) : (JsonElement?)null;

        // special_tokens_map.json wins over tokenizer_config.json, as in transformers.
        string? Special(string name) =>
            (map is { } mp ? TokenText(mp.Opt(name), mapFile, name) : null) ?? TokenText(config.Opt(name), configFile, name);

        bool? OptBool(string name) => config.Opt(name) is { ValueKind: JsonValueKind.True or JsonValueKind.False } v ? v.GetBoolean() : null;
        var cls = config.OptStr("tokenizer_class")?.Replace("Fast", "");
        (bool, bool)? llama = cls is not null && LlamaStyleClasses.Contains(cls) ? (OptBool("add_bos_token") ?? true, OptBool("add_eos_token") ?? false) : null;

        var (chat, chats) = ChatTemplates(config, configFile, dir);
        return new TokenizerSettings(Special("bos_token"), Special("eos_token"), Special("pad_token"), Special("unk_token"),
            OptBool("add_bos_token"), OptBool("add_eos_token"), config.Bool("clean_up_tokenization_spaces", false),
            llama, chat, chats, config);
    }

    // A special token is a string or an AddedToken object {"content": …}.
    static string? TokenText(JsonElement? e, string file, string name) => e switch
    {
        null => null,
        { ValueKind: JsonValueKind.String } s => s.GetString(),
        { ValueKind: JsonValueKind.Object } o => o.Str("content", file, name),
        { } other => throw new PeftFormatException(file, $"field '{name}' must be a string or {{\"content\": …}}, found {other.ValueKind}"),
    };

    static (string?, IReadOnlyDictionary<string, string>) ChatTemplates(JsonElement config, string file, string dir)
    {
        var named = new Dictionary<string, string>();
        switch (config.Opt("chat_template"))
        {
            case { ValueKind: JsonValueKind.String } s:
                named["default"] = s.GetString()!;
                break;
            case { ValueKind: JsonValueKind.Array } arr:
                int i = 0;
                foreach (var t in arr.EnumerateArray())
                {
                    named[t.Str("name", file, $"chat_template[{i}]")] = t.Str("template", file, $"chat_template[{i}]");
                    i++;
                }
                break;
            case { } other:
                throw new PeftFormatException(file, $"field 'chat_template' must be a string or a list of {{name, template}}, found {other.ValueKind}");
            default:
                // Newer transformers save the template next to the config.
                var jinja = Path.Combine(dir, HfTokenizer.ChatTemplateFile);
                if (File.Exists(jinja)) named["default"] = File.ReadAllText(jinja);
                break;
        }
        return (named.GetValueOrDefault("default"), named);
    }
}
