using System.Text.Json.Nodes;

namespace PeftSharp.Tests.Cli;

public class QuickstartCommandTests
{
    [Theory]
    [InlineData("full", "finetuned")]
    [InlineData("lora", "adapter")]
    public void Tiny_quickstart_runs_the_whole_pipeline(string method, string folder)
    {
        var dir = TestPaths.TempDir();
        var o = new StringWriter(); var e = new StringWriter();
        int code = PeftSharp.Cli.Program.Run(new[] { "quickstart", "--tiny", "--method", method, "--output", dir, "--json" }, o, e);
        Assert.True(code == 0, e.ToString());
        var r = JsonNode.Parse(o.ToString().Trim().Split('\n')[^1])!;
        Assert.InRange(r["accuracy_before"]!.GetValue<double>(), 0, 1);
        Assert.True(r["fine_tune_loss"]!.GetValue<double>() < r["pretrain_loss"]!.GetValue<double>() + 5);
        Assert.Equal(3, r["samples"]!.AsArray().Count);
        Assert.True(File.Exists(Path.Combine(dir, "base", "tokenizer.json")));
        Assert.True(File.Exists(Path.Combine(dir, "merged", "model.safetensors")));
        Assert.True(File.Exists(Path.Combine(dir, folder, "loss.png")));
        if (method == "lora") Assert.True(File.Exists(Path.Combine(dir, folder, "adapter_config.json")));
    }

    /// <summary>
    /// The README's main job as a newcomer runs it (its own process, default seed and sizes): it must teach reversal.
    /// A rounding change in AdamW once left it at 0 % -> 1 % unnoticed, since only the tiny run was tested.
    /// </summary>
    [Fact]
    public void Default_quickstart_learns_reversal()
    {
        var dir = TestPaths.TempDir();
        var (code, output, err) = CliRunner.RunPiped("", TimeSpan.FromMinutes(8), "quickstart", "--output", dir, "--json");
        Assert.True(code == 0, err);
        var r = JsonNode.Parse(output.Trim().Split('\n')[^1])!;
        Assert.True(r["accuracy_after"]!.GetValue<double>() >= 0.9, $"held-out reversal accuracy {r["accuracy_after"]} after fine-tuning (before: {r["accuracy_before"]})");
        Assert.Contains(r["samples"]!.AsArray(), x => (string?)x!["prompt"] == "rv hello=" && ((string?)x["output"])!.StartsWith("olleh"));
    }
}
