using System.Text.Json.Nodes;
using PeftSharp.Models;
using static TorchSharp.torch;

namespace PeftSharp.Tests.Tuners.Lora;

public class LoraCliTests
{
    static (int Code, string Out, string Err) Run(params string[] args)
    {
        var o = new StringWriter();
        var e = new StringWriter();
        int code = PeftSharp.Cli.Program.Run(args, o, e);
        return (code, o.ToString(), e.ToString());
    }

    [Fact]
    public void Merge_writes_a_model_folder_with_the_merged_logits()
    {
        using var scope = NewDisposeScope();
        var adapter = TestPaths.Data("adapters", "llama-tiny", "lora_qv");
        var outDir = Path.Combine(TestPaths.TempDir(), "merged");
        var (code, _, err) = Run("merge", "--model", TestPaths.Model("llama-tiny"), "--adapter", adapter, "--out", outDir);
        Assert.True(code == 0, err);
        var (ids, mask) = LoraFixtureTests.Inputs("llama-tiny");
        using var _ = no_grad();
        var merged = AutoModel.FromPretrained(outDir);
        FixtureAssert.Close(merged.Forward(ids, mask).Logits, LoraFixtureTests.Expected(Path.Combine(adapter, "expected.safetensors"), "merged_logits"), mask, 1e-4, "merged folder");
    }

    [Fact]
    public void Weighted_merge_with_unequal_ranks_and_linear_fails_with_one_line()
    {
        var multi = TestPaths.Data("multi", "llama-tiny");
        var (code, _, err) = Run("merge", "--model", TestPaths.Model("llama-tiny"), "--adapter", Path.Combine(multi, "a"), "--adapter", Path.Combine(multi, "b"),
            "--weights", "0.7,0.3", "--combination", "linear", "--out", TestPaths.TempDir());
        Assert.Equal(1, code);
        Assert.Contains("same r value", err);
    }

    [Fact]
    public void Inspect_adapter_reports_method_ranks_and_counts()
    {
        var adapter = TestPaths.Data("adapters", "llama-tiny", "lora_patterns");
        var (code, output, err) = Run("inspect-adapter", adapter, "--model", TestPaths.Model("llama-tiny"), "--json");
        Assert.True(code == 0, err);
        var json = JsonNode.Parse(output)!;
        Assert.Equal("LORA", json["method"]!.GetValue<string>());
        Assert.Equal(2304, json["adapter_parameters"]!.GetValue<long>());
        Assert.Equal(12288, json["merged_changed_parameters"]!.GetValue<long>());
        var ranks = json["modules"]!.AsArray().ToDictionary(m => m!["module"]!.GetValue<string>(), m => m!["delta_rank"]!.GetValue<long>());
        Assert.Equal(4, ranks["model.layers.1.self_attn.q_proj"]);
        Assert.Equal(2, ranks["model.layers.1.self_attn.o_proj"]);
        Assert.Equal(8, ranks["model.layers.1.self_attn.k_proj"]);
    }
}
