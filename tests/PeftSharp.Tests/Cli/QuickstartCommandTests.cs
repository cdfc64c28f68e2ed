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
}
