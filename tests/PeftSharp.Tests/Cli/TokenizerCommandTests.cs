using System.Text.Json;
using PeftSharp.Tests.Tokenization;
using PeftSharp.Tokenization;

namespace PeftSharp.Tests.Cli;

public class TokenizerCommandTests
{
    static string Fixture(string name) => TestPaths.Data("tokenizers", name);

    [Fact]
    public void Tokenize_prints_ids_and_tokens_as_transformers()
    {
        var (code, o, e) = CliRunner.Run("tokenize", "--model", Fixture("qwen3"), "--text", "Hello<|endoftext|>world", "--tokens", "--json");
        Assert.True(code == 0, e);
        using var doc = JsonDocument.Parse(o);
        Assert.Equal(new[] { 9707, 151643, 14615 }, doc.RootElement.GetProperty("ids").EnumerateArray().Select(x => x.GetInt32()));
        Assert.Equal(new[] { "Hello", "<|endoftext|>", "world" }, doc.RootElement.GetProperty("tokens").EnumerateArray().Select(x => x.GetString()));
    }

    [Fact]
    public void Special_flag_adds_bos_for_sentencepiece_tokenizers()
    {
        var (_, plain, _) = CliRunner.Run("tokenize", "--model", Fixture("mistral"), "--text", "Hello world");
        var (_, special, _) = CliRunner.Run("tokenize", "--model", Fixture("mistral"), "--text", "Hello world", "--special");
        Assert.Equal("22557 1526", plain.Trim());
        Assert.Equal("1 22557 1526", special.Trim());
    }

    [Fact]
    public void Detokenize_round_trips_text()
    {
        var tok = HfTokenizer.FromFolder(Fixture("gpt2"));
        var ids = string.Join(' ', tok.Encode("Hello world, héllo!"));
        var (code, o, e) = CliRunner.Run("detokenize", "--model", Fixture("gpt2"), "--ids", ids, "--json");
        Assert.True(code == 0, e);
        Assert.Equal("Hello world, héllo!", JsonDocument.Parse(o).RootElement.GetProperty("text").GetString());
    }

    [Fact]
    public void Missing_tokenizer_is_a_one_line_error_naming_the_file()
    {
        var dir = TestPaths.TempDir();
        var (code, o, e) = CliRunner.Run("tokenize", "--model", dir, "--text", "x");
        Assert.Equal(1, code);
        Assert.Contains("tokenizer.json", e);
        Assert.Single(e.Trim().Split('\n'));
    }

    [Fact]
    public void Generate_with_a_text_prompt_equals_generate_with_its_ids()
    {
        var dir = TinyTokenizer.ModelWithTokenizer("llama-tiny");
        var ids = HfTokenizer.FromFolder(dir).Encode("hello world");
        var (c1, byText, e1) = CliRunner.Run("generate", "--model", dir, "--prompt", "hello world", "--max-new-tokens", "6", "--json");
        var (c2, byIds, e2) = CliRunner.Run("generate", "--model", dir, "--input-ids", string.Join(' ', ids), "--max-new-tokens", "6", "--json");
        Assert.True(c1 == 0, e1);
        Assert.True(c2 == 0, e2);
        var a = JsonDocument.Parse(byText).RootElement.GetProperty("rows")[0];
        var b = JsonDocument.Parse(byIds).RootElement.GetProperty("rows")[0];
        Assert.Equal(ids, a.GetProperty("prompt_ids").EnumerateArray().Select(x => x.GetInt32()));
        Assert.Equal(b.GetProperty("new_ids").ToString(), a.GetProperty("new_ids").ToString());
        Assert.Equal(HfTokenizer.FromFolder(dir).Decode(a.GetProperty("new_ids").EnumerateArray().Select(x => x.GetInt32()), skipSpecialTokens: true),
            a.GetProperty("text").GetString());
    }
}
