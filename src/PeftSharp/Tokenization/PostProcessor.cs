using System.Text.Json;

namespace PeftSharp.Tokenization;

/// <summary>
/// The special ids <c>add_special_tokens</c> puts around one sequence (tokenizer.json <c>post_processor</c>):
/// TemplateProcessing (<c>&lt;s&gt; $A</c>, <c>[CLS] $A [SEP]</c>), BertProcessing, RobertaProcessing, ByteLevel (none).
/// </summary>
internal sealed record PostProcessor(int[] Prefix, int[] Suffix)
{
    public static readonly PostProcessor None = new([], []);

    public static PostProcessor Parse(JsonElement? json, string file, string where = "post_processor")
    {
        if (json is not { } e) return None;
        var type = e.Type(file, where);
        switch (type)
        {
            case "ByteLevel":
                return None;
            case "Sequence":
                return e.Array("processors", file, where).Select((p, i) => Parse(p, file, $"{where}.processors[{i}]"))
                    .Aggregate(None, (inner, outer) => new PostProcessor([.. outer.Prefix, .. inner.Prefix], [.. inner.Suffix, .. outer.Suffix]));
            case "BertProcessing" or "RobertaProcessing":
                return new PostProcessor([PairId(e, "cls", file, where)], [PairId(e, "sep", file, where)]);
            case "TemplateProcessing":
                return Template(e, file, where);
            default:
                throw new PeftFormatException(file, $"unsupported post_processor type '{type}' at '{where}'");
        }
    }

    // "cls": ["[CLS]", 101]
    static int PairId(JsonElement e, string name, string file, string where)
    {
        var v = e.Req(name, file, where);
        return v.ValueKind == JsonValueKind.Array && v.GetArrayLength() == 2 && v[1].ValueKind == JsonValueKind.Number
            ? v[1].GetInt32() : throw new PeftFormatException(file, $"field '{where}.{name}' must be [token, id]");
    }

    static PostProcessor Template(JsonElement e, string file, string where)
    {
        var specials = e.Req("special_tokens", file, where);
        List<int> prefix = [], suffix = [];
        bool seenA = false;
        foreach (var (item, i) in e.Array("single", file, where).Select((x, i) => (x, i)))
        {
            if (item.Opt("Sequence") is not null) { seenA = true; continue; }
            var name = item.Req("SpecialToken", file, $"{where}.single[{i}]").Str("id", file, $"{where}.single[{i}].SpecialToken");
            var ids = specials.Req(name, file, $"{where}.special_tokens").Array("ids", file, $"{where}.special_tokens.{name}")
                .Select(x => x.GetInt32());
            (seenA ? suffix : prefix).AddRange(ids);
        }
        if (!seenA) throw new PeftFormatException(file, $"'{where}.single' has no Sequence entry");
        return new PostProcessor([.. prefix], [.. suffix]);
    }
}
