using System.Globalization;
using System.Text;
using System.Text.Json;

namespace PeftSharp.Tokenization;

/// <summary>A tokenizer.json <c>decoder</c>: a step on the token strings; the final strings are concatenated.</summary>
internal abstract class Decoder
{
    public abstract List<string> Apply(List<string> tokens);

    public static Decoder? Parse(JsonElement? json, string file, string where = "decoder")
    {
        if (json is not { } e) return null;
        var type = e.Type(file, where);
        return type switch
        {
            "Sequence" => new SequenceDecoder(e.Array("decoders", file, where)
                .Select((d, i) => Parse(d, file, $"{where}.decoders[{i}]")!).ToArray()),
            "ByteLevel" => new ByteLevelDecoder(),
            "WordPiece" => new WordPieceDecoder(e.OptStr("prefix") ?? "##", e.Bool("cleanup", true)),
            "Replace" => Replace(e, file, where),
            "ByteFallback" => new ByteFallbackDecoder(),
            "Fuse" => new FuncDecoder(t => [string.Concat(t)]),
            "Strip" => Strip(e.Str("content", file, where), e.Int("start", 0), e.Int("stop", 0)),
            "Metaspace" => new MetaspaceDecoder(e.Str("replacement", file, where),
                (e.OptStr("prepend_scheme") ?? (e.Bool("add_prefix_space", true) ? "always" : "never")) != "never"),
            _ => throw new PeftFormatException(file, $"unsupported decoder type '{type}' at '{where}'"),
        };
    }

    static FuncDecoder Replace(JsonElement e, string file, string where)
    {
        var (pattern, isRegex) = e.Pattern(file, where);
        if (isRegex) throw new PeftFormatException(file, $"unsupported regex pattern in Replace decoder at '{where}'");
        var content = e.Str("content", file, where);
        return new(t => t.Select(s => s.Replace(pattern, content, StringComparison.Ordinal)).ToList());
    }

    // Removes up to `start` leading and `stop` trailing occurrences of the char from every token.
    static FuncDecoder Strip(string content, int start, int stop)
    {
        if (content.Length != 1) throw new PeftFormatException(null, $"Strip decoder content must be one char, found '{content}'");
        char c = content[0];
        return new(t => t.Select(s =>
        {
            int a = 0, b = s.Length;
            while (a < b && a < start && s[a] == c) a++;
            while (b > a && s.Length - b < stop && s[b - 1] == c) b--;
            return s[a..b];
        }).ToList());
    }

    /// <summary>transformers' <c>clean_up_tokenization</c> (applied after decoding when the config asks for it).</summary>
    public static string CleanUpTokenization(string s) => s
        .Replace(" .", ".").Replace(" ?", "?").Replace(" !", "!").Replace(" ,", ",").Replace(" ' ", "'")
        .Replace(" n't", "n't").Replace(" 'm", "'m").Replace(" 's", "'s").Replace(" 've", "'ve").Replace(" 're", "'re");
}

internal sealed class FuncDecoder(Func<List<string>, List<string>> f) : Decoder
{
    public override List<string> Apply(List<string> tokens) => f(tokens);
}

internal sealed class SequenceDecoder(Decoder[] steps) : Decoder
{
    public override List<string> Apply(List<string> tokens)
    {
        foreach (var s in steps) tokens = s.Apply(tokens);
        return tokens;
    }
}

/// <summary>Collects the bytes of all tokens, then reads UTF-8 (invalid sequences become U+FFFD).</summary>
internal sealed class ByteLevelDecoder : Decoder
{
    public override List<string> Apply(List<string> tokens)
    {
        var bytes = new List<byte>();
        foreach (var t in tokens) ByteLevel.AppendBytes(t, bytes);
        return [Encoding.UTF8.GetString(bytes.ToArray())];
    }
}

internal sealed class WordPieceDecoder(string prefix, bool cleanup) : Decoder
{
    public override List<string> Apply(List<string> tokens) => tokens.Select((t, i) =>
    {
        if (i > 0) t = t.StartsWith(prefix, StringComparison.Ordinal) ? t[prefix.Length..] : " " + t;
        return cleanup ? Cleanup(t) : t;
    }).ToList();

    // The tokenizers crate's WordPiece cleanup: transformers' list plus "do not" → "don't".
    static string Cleanup(string s) => CleanUpTokenization(s).Replace(" do not", " don't");
}

/// <summary>Runs of &lt;0xNN&gt; tokens become their UTF-8 text, or one U+FFFD per byte when invalid.</summary>
internal sealed class ByteFallbackDecoder : Decoder
{
    static readonly UTF8Encoding Strict = new(false, throwOnInvalidBytes: true);

    public override List<string> Apply(List<string> tokens)
    {
        var output = new List<string>(tokens.Count);
        var pending = new List<byte>();
        void Flush()
        {
            if (pending.Count == 0) return;
            try { output.Add(Strict.GetString(pending.ToArray())); }
            catch (DecoderFallbackException) { output.AddRange(Enumerable.Repeat("\uFFFD", pending.Count)); }
            pending.Clear();
        }
        foreach (var t in tokens)
        {
            if (t.Length == 6 && t.StartsWith("<0x", StringComparison.Ordinal) && t[5] == '>'
                && byte.TryParse(t.AsSpan(3, 2), NumberStyles.HexNumber, CultureInfo.InvariantCulture, out var b))
                pending.Add(b);
            else { Flush(); output.Add(t); }
        }
        Flush();
        return output;
    }
}

internal sealed class MetaspaceDecoder(string replacement, bool stripFirstSpace) : Decoder
{
    public override List<string> Apply(List<string> tokens) => tokens.Select((t, i) =>
    {
        var s = t.Replace(replacement, " ");
        return i == 0 && stripFirstSpace && s.StartsWith(' ') ? s[1..] : s;
    }).ToList();
}
