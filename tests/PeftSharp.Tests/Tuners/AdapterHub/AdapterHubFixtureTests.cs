using System.Text.Json.Nodes;
using PeftSharp.IO;
using PeftSharp.Models;
using PeftSharp.Tuners;
using PeftSharp.Tuners.AdapterHub;
using PeftSharp.Tuners.Bottleneck;
using static TorchSharp.torch;

namespace PeftSharp.Tests.Tuners.AdapterHub;

/// <summary>The AdapterHub fixtures (adapters 1.2.0) on bert-tiny-cls and llama-tiny: logits within 1e-4 where attention_mask is 1.</summary>
public class AdapterHubFixtureTests
{
    internal static string Case(string baseModel, string name) => TestPaths.Data("adapterhub", baseModel, name);

    internal static ModelInputs Inputs(string baseModel)
    {
        using var cases = SafetensorsFile.Open(Path.Combine(TestPaths.Model(baseModel), "cases.safetensors"));
        return new ModelInputs
        {
            InputIds = cases.Load("input_ids"),
            AttentionMask = cases.Load("attention_mask"),
            TokenTypeIds = cases.Keys.Contains("token_type_ids") ? cases.Load("token_type_ids") : null,
        };
    }

    internal static void AssertLogits(PeftModel peft, string baseModel, string name)
    {
        using var _ = no_grad();
        var inputs = Inputs(baseModel);
        var logits = peft.Forward(inputs).Logits;
        using var f = SafetensorsFile.Open(Path.Combine(Case(baseModel, name), "expected.safetensors"));
        var mask = logits.dim() == 3 ? inputs.AttentionMask : null;
        FixtureAssert.Close(logits, f.Load("logits"), mask, 1e-4, $"{baseModel}/{name} logits");
    }

    internal static PeftModel Load(string baseModel, string dir, string name = "default") =>
        PeftModel.FromPretrained(AutoModel.FromPretrained(TestPaths.Model(baseModel)), dir, name);

    public static TheoryData<string, string> SingleFolderCases()
    {
        var d = new TheoryData<string, string>();
        foreach (var b in new[] { "bert-tiny-cls", "llama-tiny" })
            foreach (var c in new[] { "seq_bn", "double_seq_bn", "par_bn", "scaled_par_bn", "seq_bn_leave_out", "lora", "lora_all", "prefix_tuning", "mam", "unipelt" })
                d.Add(b, c);
        return d;
    }

    [Theory]
    [MemberData(nameof(SingleFolderCases))]
    public void Adapter_folder_reproduces_adapterhub_logits(string baseModel, string name)
    {
        using var scope = NewDisposeScope();
        var peft = Load(baseModel, Case(baseModel, name));
        Assert.IsType<AdapterHubConfig>(peft.ActiveConfig);
        AssertLogits(peft, baseModel, name);
    }

    [Theory]
    [InlineData("bert-tiny-cls")]
    [InlineData("llama-tiny")]
    public void Stack_of_two_adapters_reproduces_logits(string baseModel)
    {
        using var scope = NewDisposeScope();
        var dir = Case(baseModel, "stack");
        var peft = Load(baseModel, Path.Combine(dir, "a"), "a");
        peft.LoadAdapter(Path.Combine(dir, "b"), "b");
        HubAdapters.Activate(peft, Composition.Stack("a", "b"));
        AssertLogits(peft, baseModel, "stack");
    }

    [Theory]
    [InlineData("bert-tiny-cls")]
    [InlineData("llama-tiny")]
    public void Fusion_of_two_adapters_reproduces_logits(string baseModel)
    {
        using var scope = NewDisposeScope();
        var dir = Case(baseModel, "fuse");
        var peft = Load(baseModel, Path.Combine(dir, "a"), "a");
        peft.LoadAdapter(Path.Combine(dir, "b"), "b");
        Assert.Equal(new[] { "a", "b" }, HubAdapters.LoadFusion(peft, Path.Combine(dir, "fusion")));
        HubAdapters.Activate(peft, Composition.Fuse("a", "b"));
        AssertLogits(peft, baseModel, "fuse");
    }
}
