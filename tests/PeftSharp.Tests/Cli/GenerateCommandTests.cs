using System.Text.Json;
using PeftSharp.Tests.Inference;

namespace PeftSharp.Tests.Cli;

public class GenerateCommandTests
{
    static (int Code, string Out, string Err) Run(params string[] args) => CliRunner.Run(args);

    static int[] Ints(JsonElement e) => e.EnumerateArray().Select(x => x.GetInt32()).ToArray();

    [Fact]
    public void Json_output_equals_transformers_greedy_ids()
    {
        var fx = GreedyFixture.Load("llama-tiny");
        var (code, stdout, stderr) = Run("generate", "--model", TestPaths.Model("llama-tiny"), "--input-ids", string.Join(' ', fx.SinglePrompt),
            "--max-new-tokens", "8", "--eos-id", "2", "--pad-id", "0", "--json");
        Assert.True(code == 0, stderr);
        using var doc = JsonDocument.Parse(stdout);
        var row = Assert.Single(doc.RootElement.GetProperty("rows").EnumerateArray());
        Assert.Equal(fx.SinglePrompt, Ints(row.GetProperty("prompt_ids")));
        Assert.Equal(fx.SingleNew, Ints(row.GetProperty("new_ids")));
        Assert.Equal("length", row.GetProperty("finish_reason").GetString());
        Assert.False(row.TryGetProperty("text", out _));
    }

    [Fact]
    public void Adapter_generation_equals_peft_greedy_ids()
    {
        var dir = TestPaths.Data("adapters", "llama-tiny", "lora_qv");
        var fx = GreedyFixture.FromFolder(dir);
        var ids = string.Join(';', fx.BatchUnpadded.Select(r => string.Join(' ', r)));
        var (code, stdout, stderr) = Run("generate", "--model", TestPaths.Model("llama-tiny"), "--adapter", dir, "--input-ids", ids,
            "--max-new-tokens", "8", "--eos-id", "2", "--pad-id", "0", "--json");
        Assert.True(code == 0, stderr);
        using var doc = JsonDocument.Parse(stdout);
        Assert.Equal(fx.BatchNew, doc.RootElement.GetProperty("rows").EnumerateArray().Select(r => Ints(r.GetProperty("new_ids"))).ToArray());
    }

    [Fact]
    public void Batch_rows_are_left_padded_and_streamed_in_text_mode()
    {
        var fx = GreedyFixture.Load("llama-tiny");
        var ids = string.Join(';', fx.BatchUnpadded.Select(r => string.Join(' ', r)));
        var (code, stdout, stderr) = Run("generate", "--model", TestPaths.Model("llama-tiny"), "--input-ids", ids, "--max-new-tokens", "8");
        Assert.True(code == 0, stderr);
        var lines = stdout.Split('\n', StringSplitOptions.RemoveEmptyEntries);
        for (int r = 0; r < 3; r++)
        {
            Assert.Equal(fx.BatchNew[r].Select(t => $"row {r}: {t}"), lines.Where(l => l.StartsWith($"row {r}: ")));
            Assert.Contains($"row {r} (length): {string.Join(' ', fx.BatchUnpadded[r])} | {string.Join(' ', fx.BatchNew[r])}", lines);
        }
    }

    [Fact]
    public void Text_prompts_and_bad_arguments_fail_with_one_line()
    {
        var model = TestPaths.Model("llama-tiny");
        var (code, _, err) = Run("generate", "--model", model, "--prompt", "hello");
        Assert.Equal(1, code);
        Assert.Contains("tokenizer.json", err);
        Assert.Contains("--input-ids", err);
        Assert.Single(err.Trim().Split('\n'));

        Assert.Equal(1, Run("generate", "--model", model).Code);
        Assert.Equal(1, Run("generate", "--model", model, "--input-ids", "1 2 x").Code);
        var (c2, _, e2) = Run("generate", "--model", model, "--input-ids", "1 2 999");
        Assert.Equal(1, c2);
        Assert.Contains("999", e2);
        var (c3, _, e3) = Run("generate", "--model", model, "--input-ids", "1 2", "--top-p", "0");
        Assert.Equal(1, c3);
        Assert.Contains("top_p", e3);
    }
}
