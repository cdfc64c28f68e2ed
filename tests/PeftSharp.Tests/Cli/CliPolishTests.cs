using System.Diagnostics;
using System.Text.Json.Nodes;
using PeftSharp.Tokenization;

namespace PeftSharp.Tests.Cli;

/// <summary>tokenize from a file or stdin, and merge's report.</summary>
public class CliPolishTests
{
    static string Qwen3 => TestPaths.Data("tokenizers", "qwen3");

    static int[] Ids(string json) => JsonNode.Parse(json)!["ids"]!.AsArray().Select(n => n!.GetValue<int>()).ToArray();

    [Fact]
    public void Tokenize_reads_a_file_with_nul_bytes_and_a_large_text_as_the_tokenizer_encodes_it()
    {
        var dir = TestPaths.TempDir();
        var text = "a\0b <|endoftext|> héllo\n" + string.Concat(Enumerable.Repeat("The quick brown fox jumps over the lazy dog. ", 5000));
        var path = Path.Combine(dir, "in.txt");
        File.WriteAllText(path, text);
        var (code, o, e) = CliRunner.Run("tokenize", "--model", Qwen3, "--file", path, "--json");
        Assert.True(code == 0, e);
        var expected = HfTokenizer.FromFolder(Qwen3).Encode(text, addSpecialTokens: false);
        Assert.Equal(expected, Ids(o));
        Assert.True(expected.Count > 40_000);

        var (both, _, bothErr) = CliRunner.Run("tokenize", "--model", Qwen3, "--file", path, "--text", "x");
        Assert.Equal(1, both);
        Assert.Contains("one of --text and --file", bothErr);
        var (missing, _, missingErr) = CliRunner.Run("tokenize", "--model", Qwen3, "--file", Path.Combine(dir, "nope.txt"));
        Assert.Equal(1, missing);
        Assert.Contains("nope.txt", missingErr);
    }

    [Fact]
    public void Tokenize_reads_piped_stdin()
    {
        var (code, output, err) = CliRunner.RunPiped("Hello\0world<|endoftext|>", TimeSpan.FromMinutes(2), "tokenize", "--model", Qwen3, "--json");
        Assert.True(code == 0, err);
        Assert.Equal(HfTokenizer.FromFolder(Qwen3).Encode("Hello\0world<|endoftext|>", addSpecialTokens: false), Ids(output));
    }

    [Fact]
    public void Merge_reports_the_folder_it_wrote_and_that_the_source_is_unchanged()
    {
        var outDir = Path.Combine(TestPaths.TempDir(), "merged");
        var model = TestPaths.Model("llama-tiny");
        var (code, o, e) = CliRunner.Run("merge", "--model", model, "--adapter", TestPaths.Data("adapters", "llama-tiny", "lora_qv"), "--out", outDir);
        Assert.True(code == 0, e);
        Assert.StartsWith($"wrote {outDir}", o);
        Assert.Contains($"{model} itself is unchanged", o);
        Assert.DoesNotContain(" into ", o);
    }
}
