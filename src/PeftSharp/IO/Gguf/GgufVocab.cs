using System.Text.Json;
using System.Text.Json.Nodes;
using System.Text.RegularExpressions;

namespace PeftSharp.IO.Gguf;

/// <summary>
/// A model folder's tokenizer as llama.cpp reads it from GGUF metadata. A BPE tokenizer with byte fallback and a "▁"
/// space marker (Llama-2, Mistral, llama2.c) becomes llama.cpp's SentencePiece model "llama" with scores that
/// reproduce SentencePiece's merge order (-id); a byte-level BPE (GPT-2, Qwen2, Llama-3) becomes "gpt2" with its merges.
/// Token types follow convert_hf_to_gguf: special added tokens CONTROL, the unk token UNKNOWN, &lt;0xNN&gt; BYTE, other
/// added tokens USER_DEFINED, ids without a token "[PADn]" UNUSED (up to the embedding's rows).
/// </summary>
public static class GgufVocab
{
    enum TokenType { Normal = 1, Unknown = 2, Control = 3, UserDefined = 4, Unused = 5, Byte = 6 }

    static readonly Regex ByteToken = new(@"^<0x[0-9A-Fa-f]{2}>$", RegexOptions.CultureInvariant);

    /// <summary>Adds the tokenizer.* keys for the tokenizer in <paramref name="dir"/>, padded to <paramref name="vocabSize"/> tokens.</summary>
    public static void Add(GgufWriter w, string dir, string modelType, int vocabSize, int? configBos, int? configEos)
    {
        var path = Path.Combine(dir, "tokenizer.json");
        if (!File.Exists(path)) throw new PeftFormatException(path, "missing: GGUF export embeds the tokenizer, read from tokenizer.json");
        JsonObject root;
        try { root = JsonNode.Parse(File.ReadAllText(path))?.AsObject() ?? throw new PeftFormatException(path, "must be a JSON object"); }
        catch (JsonException e) { throw new PeftFormatException(path, $"not valid JSON ({e.Message})"); }
        var model = root["model"] as JsonObject ?? throw new PeftFormatException(path, "missing 'model'");
        if ((string?)model["type"] != "BPE")
            throw new PeftFormatException(path, $"model.type '{(string?)model["type"]}': GGUF export handles BPE tokenizers (SentencePiece-style or byte-level)");
        var vocab = (model["vocab"] as JsonObject ?? throw new PeftFormatException(path, "model.vocab must be an object"))
            .ToDictionary(kv => kv.Value!.GetValue<int>(), kv => kv.Key);
        var added = (root["added_tokens"] as JsonArray ?? new JsonArray()).OfType<JsonObject>()
            .Select(t => (Id: t["id"]!.GetValue<int>(), Content: t["content"]!.GetValue<string>(), Special: t["special"]?.GetValue<bool>() ?? false)).ToList();
        foreach (var a in added) vocab[a.Id] = a.Content;
        int count = Math.Max(vocabSize, vocab.Count == 0 ? 0 : vocab.Keys.Max() + 1);
        if (count > vocabSize)
            throw new PeftFormatException(path, $"the tokenizer has ids up to {count - 1}, beyond the model's {vocabSize} embedding rows");

        bool spm = model["byte_fallback"]?.GetValue<bool>() == true && vocab.Values.Any(t => t.StartsWith('▁'));
        var unk = (string?)model["unk_token"];
        var specials = added.Where(a => a.Special).Select(a => a.Id).ToHashSet();
        var addedIds = added.Where(a => !a.Special).Select(a => a.Id).ToHashSet();
        var tokens = new List<string>(count);
        var types = new List<int>(count);
        for (int id = 0; id < count; id++)
        {
            if (!vocab.TryGetValue(id, out var token)) { tokens.Add($"[PAD{id}]"); types.Add((int)TokenType.Unused); continue; }
            tokens.Add(token);
            types.Add((int)(token == unk ? TokenType.Unknown
                : specials.Contains(id) ? TokenType.Control
                : spm && ByteToken.IsMatch(token) ? TokenType.Byte
                : addedIds.Contains(id) ? TokenType.UserDefined
                : TokenType.Normal));
        }

        var config = ReadTokenizerConfig(dir);
        w.Add("tokenizer.ggml.model", GgufValue.Str(spm ? "llama" : "gpt2"));
        if (!spm) w.Add("tokenizer.ggml.pre", GgufValue.Str(PreTokenizer(modelType)));
        w.Add("tokenizer.ggml.tokens", GgufValue.Strings(tokens));
        if (spm) w.Add("tokenizer.ggml.scores", GgufValue.Floats(Enumerable.Range(0, count).Select(i => -(float)i).ToList()));
        w.Add("tokenizer.ggml.token_type", GgufValue.Ints(types));
        if (!spm) w.Add("tokenizer.ggml.merges", GgufValue.Strings(Merges(model, path)));

        int? Id(string key, int? fallback) =>
            SpecialContent(config?[key]) is { } content && vocab.FirstOrDefault(kv => kv.Value == content) is { Value: not null } kv ? kv.Key : fallback;
        if (Id("bos_token", configBos) is int bos) w.Add("tokenizer.ggml.bos_token_id", GgufValue.U32((uint)bos));
        if (Id("eos_token", configEos) is int eos) w.Add("tokenizer.ggml.eos_token_id", GgufValue.U32((uint)eos));
        if (unk is not null && vocab.FirstOrDefault(kv => kv.Value == unk) is { Value: not null } u) w.Add("tokenizer.ggml.unknown_token_id", GgufValue.U32((uint)u.Key));
        if (Id("pad_token", null) is int pad) w.Add("tokenizer.ggml.padding_token_id", GgufValue.U32((uint)pad));
        var (addBos, addEos) = AddsSpecialTokens(root, config, spm);
        w.Add("tokenizer.ggml.add_bos_token", GgufValue.Bool(addBos));
        w.Add("tokenizer.ggml.add_eos_token", GgufValue.Bool(addEos));
        if (spm) w.Add("tokenizer.ggml.add_space_prefix", GgufValue.Bool(HasPrependNormalizer(root)));
        foreach (var (name, template) in ChatTemplates(dir, config))
            w.Add(name is null ? "tokenizer.chat_template" : $"tokenizer.chat_template.{name}", GgufValue.Str(template));
    }

    // llama.cpp picks its pre-tokenizer regex by name; these are the names its converter writes for these families.
    static string PreTokenizer(string modelType) => modelType switch
    {
        "gpt2" => "gpt-2",
        "qwen2" => "qwen2",
        "llama" or "mistral" => "llama-bpe",
        _ => "default",
    };

    static List<string> Merges(JsonObject model, string path)
    {
        var merges = model["merges"] as JsonArray ?? throw new PeftFormatException(path, "a byte-level BPE needs model.merges");
        // Pairs (tokenizers >= 0.20) are joined by a space; a space inside a part becomes U+0120 ('Ġ'), as llama.cpp's converter writes it.
        return merges.Select(m => m is JsonArray pair
            ? string.Join(' ', pair.Select(p => string.Concat(p!.GetValue<string>().Select(c => c == ' ' ? (char)(' ' + 256) : c))))
            : m!.GetValue<string>()).ToList();
    }

    static JsonObject? ReadTokenizerConfig(string dir)
    {
        var path = Path.Combine(dir, "tokenizer_config.json");
        if (!File.Exists(path)) return null;
        try { return JsonNode.Parse(File.ReadAllText(path)) as JsonObject; }
        catch (JsonException e) { throw new PeftFormatException(path, $"not valid JSON ({e.Message})"); }
    }

    static string? SpecialContent(JsonNode? node) => node switch
    {
        JsonValue v when v.TryGetValue<string>(out var s) => s,
        JsonObject o => (string?)o["content"],
        _ => null,
    };

    static (bool Bos, bool Eos) AddsSpecialTokens(JsonObject root, JsonObject? config, bool spm)
    {
        bool? Flag(string key) => config?[key] is JsonValue v && v.TryGetValue<bool>(out var b) ? b : null;
        // Otherwise from the post-processor template: a special token before or after the sequence.
        var single = (root["post_processor"] as JsonObject)?["single"] as JsonArray;
        bool leading = single is { Count: > 1 } && single[0] is JsonObject first && first.ContainsKey("SpecialToken");
        bool trailing = single is { Count: > 1 } && single[^1] is JsonObject last && last.ContainsKey("SpecialToken");
        return (Flag("add_bos_token") ?? (leading || spm && single is null), Flag("add_eos_token") ?? trailing);
    }

    static bool HasPrependNormalizer(JsonObject root)
    {
        var normalizer = root["normalizer"] as JsonObject;
        var list = normalizer?["normalizers"] as JsonArray;
        var all = list is null ? [normalizer] : list.OfType<JsonObject>().ToList();
        return all.Any(n => (string?)n?["type"] == "Prepend") || (string?)((root["pre_tokenizer"] as JsonObject)?["type"]) == "Metaspace";
    }

    /// <summary>The folder's chat templates: chat_template.jinja or tokenizer_config.json's (one string, or named ones; "default" unnamed).</summary>
    static IEnumerable<(string? Name, string Template)> ChatTemplates(string dir, JsonObject? config)
    {
        var jinja = Path.Combine(dir, "chat_template.jinja");
        if (File.Exists(jinja)) { yield return (null, File.ReadAllText(jinja)); yield break; }
        switch (config?["chat_template"])
        {
            case JsonValue v when v.TryGetValue<string>(out var s):
                yield return (null, s);
                break;
            case JsonArray list:
                foreach (var item in list.OfType<JsonObject>())
                    if ((string?)item["name"] is { } name && (string?)item["template"] is { } t)
                        yield return (name == "default" ? null : name, t);
                break;
        }
    }
}
