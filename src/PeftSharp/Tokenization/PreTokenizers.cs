using System.Globalization;
using System.Text;
using System.Text.Json;
using System.Text.RegularExpressions;

namespace PeftSharp.Tokenization;

/// <summary>A tokenizer.json <c>pre_tokenizer</c>: splits one normalized segment into the pieces the model encodes.</summary>
internal abstract class PreTokenizer
{
    /// <param name="atStart">the piece begins the whole input (Metaspace's <c>prepend_scheme: first</c>).</param>
    public abstract void Split(string piece, bool atStart, List<string> output);

    /// <summary>True when the pieces are raw text that the model must read as UTF-8 bytes (a ByteLevel step).</summary>
    public virtual bool ByteLevel => false;

    public const string Gpt2Pattern = @"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";

    public static PreTokenizer? Parse(JsonElement? json, string file, string where = "pre_tokenizer")
    {
        if (json is not { } e) return null;
        var type = e.Type(file, where);
        switch (type)
        {
            case "Sequence":
                return new SequencePreTokenizer(e.Array("pretokenizers", file, where)
                    .Select((p, i) => Parse(p, file, $"{where}.pretokenizers[{i}]")!).ToArray());
            case "ByteLevel":
                return new ByteLevelPreTokenizer(e.Bool("add_prefix_space", false),
                    e.Bool("use_regex", true) ? new SplitRegex(Gpt2Pattern) : null);
            case "Split":
            {
                var (pattern, isRegex) = e.Pattern(file, where);
                var behavior = e.Str("behavior", file, where);
                if (behavior is not ("Isolated" or "Removed" or "MergedWithPrevious" or "MergedWithNext"))
                    throw new PeftFormatException(file, $"unsupported Split behavior '{behavior}' at '{where}'");
                return new SplitPreTokenizer(new SplitRegex(isRegex ? pattern : Regex.Escape(pattern), file, where), behavior, e.Bool("invert", false));
            }
            case "Whitespace":
                return new SplitPreTokenizer(new SplitRegex(@"\w+|[^\w\s]+"), "Removed", invert: true);
            case "WhitespaceSplit":
                return new SplitPreTokenizer(new SplitRegex(@"\s+"), "Removed", invert: false);
            case "BertPreTokenizer":
                return new BertPreTokenizer();
            case "Metaspace":
            {
                var replacement = e.Str("replacement", file, where);
                var scheme = e.OptStr("prepend_scheme") ?? (e.Bool("add_prefix_space", true) ? "always" : "never");
                return new MetaspacePreTokenizer(replacement, scheme, e.Bool("split", true));
            }
            default:
                throw new PeftFormatException(file, $"unsupported pre_tokenizer type '{type}' at '{where}'");
        }
    }
}

internal sealed class SequencePreTokenizer(PreTokenizer[] steps) : PreTokenizer
{
    public override bool ByteLevel => steps.Any(s => s.ByteLevel);

    public override void Split(string piece, bool atStart, List<string> output)
    {
        var current = new List<string> { piece };
        var next = new List<string>();
        foreach (var step in steps)
        {
            next.Clear();
            for (int i = 0; i < current.Count; i++) step.Split(current[i], atStart && i == 0, next);
            (current, next) = (next, current);
        }
        output.AddRange(current);
    }
}

/// <summary>Optional GPT-2 regex split and prefix space; the byte mapping itself is the model's job.</summary>
internal sealed class ByteLevelPreTokenizer(bool addPrefixSpace, SplitRegex? regex) : PreTokenizer
{
    public override bool ByteLevel => true;

    public override void Split(string piece, bool atStart, List<string> output)
    {
        if (addPrefixSpace && !piece.StartsWith(' ')) piece = " " + piece;
        if (regex is null) { if (piece.Length > 0) output.Add(piece); return; }
        foreach (var (start, length, _) in regex.Segments(piece)) output.Add(piece.Substring(start, length));
    }
}

internal sealed class SplitPreTokenizer(SplitRegex regex, string behavior, bool invert) : PreTokenizer
{
    public override void Split(string piece, bool atStart, List<string> output)
    {
        string? pending = null; // MergedWithNext: a delimiter waiting for the following piece
        foreach (var (start, length, isMatch) in regex.Segments(piece))
        {
            var s = piece.Substring(start, length);
            bool delimiter = isMatch != invert;
            switch (behavior)
            {
                case "Removed" when delimiter: break;
                case "MergedWithPrevious" when delimiter && output.Count > 0 && start > 0: output[^1] += s; break;
                case "MergedWithNext" when delimiter: pending = (pending ?? "") + s; break;
                default:
                    if (pending is not null) { s = pending + s; pending = null; }
                    output.Add(s);
                    break;
            }
        }
        if (pending is not null) output.Add(pending);
    }
}

/// <summary>Splits on whitespace (dropped) and isolates every punctuation char, as BERT does.</summary>
internal sealed class BertPreTokenizer : PreTokenizer
{
    public override void Split(string piece, bool atStart, List<string> output)
    {
        var word = new StringBuilder();
        void Flush() { if (word.Length > 0) { output.Add(word.ToString()); word.Clear(); } }
        foreach (var r in piece.EnumerateRunes())
        {
            if (UnicodeText.IsWhiteSpace(r)) Flush();
            else if (UnicodeText.IsBertPunctuation(r)) { Flush(); output.Add(r.ToString()); }
            else word.Append(r.ToString());
        }
        Flush();
    }
}

/// <summary>SentencePiece-style: spaces become ▁, a ▁ is prepended, and each word starts at a ▁.</summary>
internal sealed class MetaspacePreTokenizer(string replacement, string scheme, bool split) : PreTokenizer
{
    public override void Split(string piece, bool atStart, List<string> output)
    {
        var s = piece.Replace(" ", replacement);
        if ((scheme == "always" || scheme == "first" && atStart) && !s.StartsWith(replacement)) s = replacement + s;
        if (!split) { if (s.Length > 0) output.Add(s); return; }
        int begin = 0;
        for (int i = 1; i <= s.Length; i++)
        {
            if (i == s.Length || string.CompareOrdinal(s, i, replacement, 0, replacement.Length) == 0)
            {
                if (i > begin) output.Add(s[begin..i]);
                begin = i;
            }
        }
    }
}

/// <summary>
/// A split regex with Rust/Oniguruma semantics on code points. .NET's Regex sees UTF-16 units, so an astral
/// letter (a surrogate pair) would not match <c>\p{L}</c>; such text is matched on a stand-in string with one
/// BMP char of the same Unicode category per code point, and the positions are mapped back.
/// </summary>
internal sealed class SplitRegex
{
    readonly Regex _regex;
    static readonly char[] StandIn = BuildStandIns();

    public SplitRegex(string pattern, string? file = null, string? where = null) =>
        _regex = TokenizerRegex.Create(pattern, file, where);

    static char[] BuildStandIns()
    {
        var table = new char[32];
        Array.Fill(table, '\uFFFD');
        for (int c = 0xFFFF; c >= 0x80; c--)
        {
            if (char.IsSurrogate((char)c)) continue;
            table[(int)CharUnicodeInfo.GetUnicodeCategory(c)] = (char)c;
        }
        return table;
    }

    /// <summary>Matches and the gaps between them, in order, covering the whole text.</summary>
    public IEnumerable<(int start, int length, bool isMatch)> Segments(string text)
    {
        if (text.Length == 0) yield break;
        int[]? map = null; // stand-in index → original index (length + 1 entries)
        string subject = text;
        if (text.AsSpan().IndexOfAnyInRange('\uD800', '\uDFFF') >= 0) (subject, map) = StandInText(text);
        int last = 0;
        foreach (var m in TokenizerRegex.Matches(_regex, subject))
        {
            if (m.Length == 0) continue;
            int start = map?[m.Index] ?? m.Index, end = map?[m.Index + m.Length] ?? m.Index + m.Length;
            if (start > last) yield return (last, start - last, false);
            yield return (start, end - start, true);
            last = end;
        }
        if (last < text.Length) yield return (last, text.Length - last, false);
    }

    static (string, int[]) StandInText(string text)
    {
        var sb = new StringBuilder(text.Length);
        var map = new List<int>(text.Length + 1);
        for (int i = 0; i < text.Length;)
        {
            map.Add(i);
            if (Rune.DecodeFromUtf16(text.AsSpan(i), out var r, out int used) == System.Buffers.OperationStatus.Done && used == 2)
            {
                sb.Append(StandIn[(int)Rune.GetUnicodeCategory(r)]);
                i += 2;
            }
            else { sb.Append(text[i]); i++; }
        }
        map.Add(text.Length);
        return (sb.ToString(), map.ToArray());
    }
}
