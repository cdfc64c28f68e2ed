using System.Text;
using PeftSharp.Tokenization;

namespace PeftSharp.Tests.Tokenization;

public class HfTokenizerTests
{
    static HfTokenizer Load(string name) => HfTokenizerFixtureTests.Load(name);

    [Fact]
    public void SpecialTokensAndSizesFollowTheConfig()
    {
        var mistral = Load("mistral");
        Assert.Equal(("<s>", 1, "</s>", 2, "<unk>"), (mistral.BosToken, mistral.BosTokenId, mistral.EosToken, mistral.EosTokenId, mistral.UnkToken));
        Assert.True(mistral.AddBosToken);
        Assert.False(mistral.AddEosToken);
        Assert.Null(mistral.PadTokenId);
        Assert.Equal(32000, mistral.VocabSize);

        var qwen = Load("qwen3");
        Assert.Equal((151645, 151643), (qwen.EosTokenId!.Value, qwen.PadTokenId!.Value));
        Assert.Null(qwen.BosToken);
        Assert.False(qwen.AddBosToken);
        Assert.Equal(151643, qwen.VocabSize);
        Assert.Equal(151669, qwen.TotalVocabSize);
        Assert.Equal(151667, qwen.AddedTokens["<think>"]);
        Assert.True(qwen.IsSpecial(151644));
        Assert.False(qwen.IsSpecial(151667));
        Assert.StartsWith("{%- if tools %}", qwen.ChatTemplate);
        Assert.Equal(qwen.ChatTemplate, qwen.ChatTemplates["default"]);

        var bert = Load("bert-base-uncased");
        Assert.Equal((0, 100), (bert.PadTokenId!.Value, bert.TokenToId("[UNK]")!.Value));
        Assert.Equal(7592, bert.TokenToId("hello"));
        Assert.Null(bert.TokenToId("not-a-token"));
        Assert.Null(bert.ChatTemplate);
        Assert.Equal(["[CLS]", "hello", "[SEP]"], bert.ConvertIdsToTokens([101, 7592, 102]));

        var gpt2 = Load("gpt2");
        Assert.Equal((50256, 50257), (gpt2.EosTokenId!.Value, gpt2.VocabSize));
        Assert.False(gpt2.AddBosToken);
    }

    [Fact]
    public void ByteLevelDecodeJoinsPartialUtf8AcrossTokens()
    {
        var gpt2 = Load("gpt2");
        var ids = gpt2.Encode("héllo 😀", addSpecialTokens: false);
        Assert.True(ids.Count > 3);
        Assert.Equal("héllo 😀", gpt2.Decode(ids));
        Assert.Equal("", gpt2.Decode([]));
    }

    [Fact]
    public void UnknownIdIsSkippedByDecodeAndAnErrorForTokenLookup()
    {
        var gpt2 = Load("gpt2");
        Assert.Equal("Hello", gpt2.Decode([15496, 60000]));
        var ex = Assert.Throws<PeftSharpException>(() => gpt2.ConvertIdsToTokens([60000]));
        Assert.Contains("60000", ex.Message);
    }

    [Fact]
    public void ChatTemplateListAndSpecialTokensMap()
    {
        var dir = CopyOf("gpt2");
        File.WriteAllText(Path.Combine(dir, "tokenizer_config.json"),
            """{"chat_template": [{"name": "default", "template": "D"}, {"name": "tool_use", "template": "T"}], "eos_token": "x", "add_eos_token": true}""");
        File.WriteAllText(Path.Combine(dir, "special_tokens_map.json"),
            """{"eos_token": {"content": "<|endoftext|>", "lstrip": false}, "pad_token": "<|endoftext|>"}""");
        var tok = HfTokenizer.FromFolder(dir);
        Assert.Equal("D", tok.ChatTemplate);
        Assert.Equal("T", tok.ChatTemplates["tool_use"]);
        Assert.Equal((50256, 50256), (tok.EosTokenId!.Value, tok.PadTokenId!.Value));
        Assert.True(tok.AddEosToken);
    }

    [Fact]
    public void LlamaClassRebuildsTheTemplateFromAddEosToken()
    {
        var dir = CopyOf("mistral");
        var cfgPath = Path.Combine(dir, "tokenizer_config.json");
        File.WriteAllText(cfgPath, File.ReadAllText(cfgPath).Replace("\"add_eos_token\": false", "\"add_eos_token\": true"));
        var tok = HfTokenizer.FromFolder(dir);
        Assert.Equal([1, 22557, 1526, 2], tok.Encode("Hello world"));
    }

    [Fact]
    public void MissingOrBadFilesNameTheFileAndField()
    {
        var empty = TestPaths.TempDir();
        var ex = Assert.Throws<PeftFormatException>(() => HfTokenizer.FromFolder(empty));
        Assert.Contains("tokenizer.json", ex.Message);

        var dir = CopyOf("gpt2");
        File.WriteAllText(Path.Combine(dir, "tokenizer.json"), """{"model": {"type": "Unigram", "vocab": {}}}""");
        ex = Assert.Throws<PeftFormatException>(() => HfTokenizer.FromFolder(dir));
        Assert.Contains("Unigram", ex.Message);
        Assert.Contains("tokenizer.json", ex.Message);

        File.WriteAllText(Path.Combine(dir, "tokenizer.json"), """{"model": {"type": "BPE", "vocab": {"a": 0}, "merges": ["a"]}}""");
        ex = Assert.Throws<PeftFormatException>(() => HfTokenizer.FromFolder(dir));
        Assert.Contains("model.merges[0]", ex.Message);

        File.WriteAllText(Path.Combine(dir, "tokenizer.json"), "{ not json");
        Assert.Throws<PeftFormatException>(() => HfTokenizer.FromFolder(dir));
    }

    [Theory]
    [InlineData("e\u0301", "\u00E9", "e\u0301", "\u00E9")]
    [InlineData("\uAC00\u11A8", "\uAC01", "\u1100\u1161\u11A8", "\uAC01")]
    [InlineData("A\u0328\u0301", "\u0104\u0301", "A\u0328\u0301", "\u0104\u0301")]
    [InlineData("\uFB01 \u2460", "\uFB01 \u2460", "\uFB01 \u2460", "fi 1")]
    [InlineData("\u1E0B\u0323", "\u1E0D\u0307", "d\u0323\u0307", "\u1E0D\u0307")]
    [InlineData("\u01C4", "\u01C4", "\u01C4", "D\u017D")]
    public void ManagedUnicodeNormalizationMatchesPython(string input, string nfc, string nfd, string nfkc)
    {
        Assert.Equal(nfc, UnicodeNormalization.Normalize(input, NormalizationForm.FormC));
        Assert.Equal(nfd, UnicodeNormalization.Normalize(input, NormalizationForm.FormD));
        Assert.Equal(nfkc, UnicodeNormalization.Normalize(input, NormalizationForm.FormKC));
    }

    static string CopyOf(string name)
    {
        var dir = TestPaths.TempDir();
        foreach (var f in Directory.GetFiles(TestPaths.Data("tokenizers", name)))
            if (!f.EndsWith(".jsonl")) File.Copy(f, Path.Combine(dir, Path.GetFileName(f)));
        return dir;
    }
}
