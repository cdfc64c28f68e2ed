using System.Text.Json.Nodes;
using PeftSharp.IO;
using PeftSharp.Models;
using PeftSharp.Tests.Cli;
using PeftSharp.Tuners;
using PeftSharp.Tuners.AdapterHub;
using PeftSharp.Tuners.Bottleneck;
using TorchSharp;
using static PeftSharp.Tests.Tuners.AdapterHub.AdapterHubFixtureTests;
using static TorchSharp.torch;

namespace PeftSharp.Tests.Tuners.AdapterHub;

// Seeds and trains through the global torch RNG: run outside the parallel phase so concurrent trainer tests stay deterministic.
[Collection(nameof(PeftSharp.Tests.Runtime.MemoryCollection))]
public class AdapterHubUnitTests
{
    static void AssertSameFile(string expected, string actual)
    {
        using var want = SafetensorsFile.Open(expected);
        using var got = SafetensorsFile.Open(actual);
        Assert.Equal(want.Keys.OrderBy(k => k, StringComparer.Ordinal), got.Keys.OrderBy(k => k, StringComparer.Ordinal));
        foreach (var k in want.Keys)
        {
            using var a = want.Load(k);
            using var b = got.Load(k);
            Assert.Equal(a.shape, b.shape);
            Assert.True(a.equal(b).all().item<bool>(), $"{k} differs");
        }
    }

    [Theory]
    [InlineData("bert-tiny-cls", "seq_bn")]
    [InlineData("llama-tiny", "unipelt")]
    [InlineData("bert-tiny-cls", "mam")]
    [InlineData("llama-tiny", "lora_all")]
    public void Saved_folder_has_adapterhub_keys_values_and_config(string baseModel, string name)
    {
        using var scope = NewDisposeScope();
        var dir = Case(baseModel, name);
        var peft = Load(baseModel, dir, name);
        var outDir = TestPaths.TempDir();
        peft.SaveAdapter(outDir, name);
        var saved = Path.Combine(outDir, name);
        AssertSameFile(Path.Combine(dir, AdapterHubMethod.WeightsFile), Path.Combine(saved, AdapterHubMethod.WeightsFile));
        var want = JsonNode.Parse(File.ReadAllText(Path.Combine(dir, AdapterFiles.ConfigFile)))!;
        var got = JsonNode.Parse(File.ReadAllText(Path.Combine(saved, AdapterFiles.ConfigFile)))!;
        Assert.True(JsonNode.DeepEquals(want, got), got.ToJsonString());
        // and it loads back to the same logits
        AssertLogits(Load(baseModel, saved), baseModel, name);
    }

    [Fact]
    public void Fusion_folder_round_trips()
    {
        using var scope = NewDisposeScope();
        var dir = Case("bert-tiny-cls", "fuse");
        var peft = Load("bert-tiny-cls", Path.Combine(dir, "a"), "a");
        peft.LoadAdapter(Path.Combine(dir, "b"), "b");
        HubAdapters.LoadFusion(peft, Path.Combine(dir, "fusion"));
        var outDir = TestPaths.TempDir();
        HubAdapters.SaveFusion(peft, outDir, new[] { "a", "b" });
        AssertSameFile(Path.Combine(dir, "fusion", HubAdapters.FusionWeightsFile), Path.Combine(outDir, HubAdapters.FusionWeightsFile));
        var want = JsonNode.Parse(File.ReadAllText(Path.Combine(dir, "fusion", HubAdapters.FusionConfigFile)))!;
        var got = JsonNode.Parse(File.ReadAllText(Path.Combine(outDir, HubAdapters.FusionConfigFile)))!;
        Assert.True(JsonNode.DeepEquals(want["config"], got["config"]), got.ToJsonString());
        Assert.Equal(want["adapter_names"]!.ToJsonString(), got["adapter_names"]!.ToJsonString());
    }

    [Fact]
    public void Pickle_only_folder_is_an_error_that_says_to_convert()
    {
        var dir = TestPaths.TempDir();
        File.Copy(Path.Combine(Case("llama-tiny", "seq_bn"), AdapterFiles.ConfigFile), Path.Combine(dir, AdapterFiles.ConfigFile));
        File.WriteAllBytes(Path.Combine(dir, AdapterHubMethod.PickleWeightsFile), new byte[] { 0x80, 0x02 });
        var e = Assert.Throws<PeftFormatException>(() => Load("llama-tiny", dir));
        Assert.Contains("pickle", e.Message);
        Assert.Contains("use_safetensors=True", e.Message);
    }

    [Fact]
    public void Prefix_outside_PeftModel_Forward_is_refused_not_dropped()
    {
        using var scope = NewDisposeScope();
        var peft = Load("llama-tiny", Case("llama-tiny", "prefix_tuning"));
        var e = Assert.Throws<PeftSharpException>(() => peft.Model.Forward(Inputs("llama-tiny")));
        Assert.Contains("PeftModel.Forward", e.Message);
    }

    [Fact]
    public void Disabled_adapters_and_dropping_every_layer_give_the_base_logits()
    {
        using var scope = NewDisposeScope();
        using var _ = no_grad();
        var inputs = Inputs("llama-tiny");
        var baseLogits = AutoModel.FromPretrained(TestPaths.Model("llama-tiny")).Forward(inputs).Logits;
        var peft = Load("llama-tiny", Case("llama-tiny", "double_seq_bn"));
        using (peft.DisableAdapters()) FixtureAssert.Close(peft.Forward(inputs).Logits, baseLogits, inputs.AttentionMask, 1e-6, "disabled");
        HubAdapters.DropLayers(peft, new[] { 0, 1 });
        FixtureAssert.Close(peft.Forward(inputs).Logits, baseLogits, inputs.AttentionMask, 1e-6, "all layers dropped");
        HubAdapters.DropLayers(peft, Array.Empty<int>());
        Assert.True(FixtureAssert.MaxAbsDiff(peft.Forward(inputs).Logits, baseLogits, inputs.AttentionMask) > 1e-2);
    }

    [Fact]
    public void AdapterHub_lora_merges_and_bottleneck_refuses()
    {
        using var scope = NewDisposeScope();
        using var _ = no_grad();
        var inputs = Inputs("llama-tiny");
        var peft = Load("llama-tiny", Case("llama-tiny", "lora"));
        var merged = peft.MergeAndUnload();
        Assert.DoesNotContain(merged.named_modules(), m => m.module is IAdapterLayer);
        using var f = SafetensorsFile.Open(Path.Combine(Case("llama-tiny", "lora"), "expected.safetensors"));
        FixtureAssert.Close(merged.Forward(inputs).Logits, f.Load("logits"), inputs.AttentionMask, 1e-4, "merged lora");

        var bn = Load("llama-tiny", Case("llama-tiny", "seq_bn"));
        Assert.Contains("cannot be merged", Assert.Throws<PeftSharpException>(() => bn.Merge()).Message);
    }

    /// <summary>Each family member trains: a few AdamW steps on a fixed batch lower the loss; only adapter tensors change.</summary>
    [Theory]
    [InlineData("seq_bn")]
    [InlineData("par_bn")]
    [InlineData("mam")]
    [InlineData("unipelt")]
    public void New_adapter_learns_with_only_its_own_parameters_trainable(string kind)
    {
        using var scope = NewDisposeScope();
        manual_seed(0);
        var model = AutoModel.FromPretrained(TestPaths.Model("llama-tiny"));
        var prefix = new HubPrefixConfig { PrefixLength = 4, BottleneckSize = 16 };
        var config = kind switch
        {
            "seq_bn" => AdapterHubConfig.Of(BottleneckConfig.SeqBn()),
            "par_bn" => AdapterHubConfig.Of(BottleneckConfig.ParBn()),
            "mam" => AdapterHubConfig.Of(prefix, BottleneckConfig.ParBn()),
            _ => AdapterHubConfig.Of(prefix with { UseGating = true }, BottleneckConfig.SeqBn() with { UseGating = true }, new HubLoraConfig { R = 4, Alpha = 2, UseGating = true }),
        };
        var peft = PeftModel.Create(model, config);
        var trainable = peft.Model.named_parameters().Where(p => p.parameter.requires_grad).Select(p => p.name).ToList();
        Assert.NotEmpty(trainable);
        Assert.All(trainable, n => Assert.True(n.Contains("adapters.") || n.Contains("loras.") || n.Contains("prefix_gates.") || n.Contains("pool."), n));
        var frozenBefore = peft.Model.named_parameters().Where(p => !p.parameter.requires_grad).Select(p => p.parameter.clone()).ToList();

        var inputs = Inputs("llama-tiny");
        var ids = inputs.InputIds!;
        var opt = optim.AdamW(peft.Model.parameters().Where(p => p.requires_grad), lr: 1e-2);
        double first = 0, last = 0;
        for (int step = 0; step < 15; step++)
        {
            using var s = NewDisposeScope();
            opt.zero_grad();
            var logits = peft.Forward(inputs).Logits;
            var loss = nn.functional.cross_entropy(logits[.., ..^1].reshape(-1, logits.shape[2]), ids[.., 1..].reshape(-1));
            loss.backward();
            opt.step();
            if (step == 0) first = loss.item<float>();
            last = loss.item<float>();
        }
        Assert.True(last < first * 0.8, $"{kind}: loss {first} -> {last}");
        var frozenAfter = peft.Model.named_parameters().Where(p => !p.parameter.requires_grad).Select(p => p.parameter).ToList();
        Assert.All(frozenBefore.Zip(frozenAfter), p => Assert.True(p.First.equal(p.Second).all().item<bool>()));
    }

    [Fact]
    public void Fusion_stage_trains_only_the_fusion_layers()
    {
        using var scope = NewDisposeScope();
        var dir = Case("llama-tiny", "fuse");
        var peft = Load("llama-tiny", Path.Combine(dir, "a"), "a");
        peft.LoadAdapter(Path.Combine(dir, "b"), "b");
        HubAdapters.AddFusion(peft, new[] { "a", "b" });
        HubAdapters.TrainFusion(peft, new[] { "a", "b" });
        peft.train();
        var trainable = peft.Model.named_parameters().Where(p => p.parameter.requires_grad).Select(p => p.name).ToList();
        Assert.NotEmpty(trainable);
        Assert.All(trainable, n => Assert.Contains("adapter_fusion_layer.a,b.", n));
        var reg = HubAdapters.FusionRegularization(peft, new[] { "a", "b" });
        Assert.NotNull(reg);
        Assert.True(reg!.item<float>() < 1e-6, "value starts at the identity");
    }

    [Fact]
    public void Cli_forward_and_inspect_read_adapterhub_folders()
    {
        using var scope = NewDisposeScope();
        var dir = Case("llama-tiny", "seq_bn");
        using var cases = SafetensorsFile.Open(Path.Combine(TestPaths.Model("llama-tiny"), "cases.safetensors"));
        var mask = cases.Load("attention_mask");
        string Rows(Tensor t) => string.Join(";", Enumerable.Range(0, (int)t.shape[0]).Select(r => string.Join(' ', t[r].data<long>().ToArray())));
        var outPath = Path.Combine(TestPaths.TempDir(), "o.safetensors");
        var (code, _, err) = CliRunner.Run("forward", "--model", TestPaths.Model("llama-tiny"), "--input-ids", Rows(cases.Load("input_ids")),
            "--attention-mask", Rows(mask), "--adapter", dir, "--output", outPath);
        Assert.True(code == 0, err);
        using (var written = SafetensorsFile.Open(outPath))
        using (var expected = SafetensorsFile.Open(Path.Combine(dir, "expected.safetensors")))
            FixtureAssert.Close(written.Load("logits"), expected.Load("logits"), mask, 1e-4, "peft forward --adapter seq_bn");

        var (code2, output, err2) = CliRunner.Run("inspect-adapter", dir, "--model", TestPaths.Model("llama-tiny"));
        Assert.True(code2 == 0, err2);
        Assert.Contains("AdapterHub bottleneck sequential (reduction_factor 16, relu", output);
    }

    [Fact]
    public void Finetuning_types_build_configs_from_yaml_keys()
    {
        var keys = new Dictionary<string, JsonNode?> { ["adapter_config"] = "double_seq_bn", ["reduction_factor"] = 8, ["leave_out"] = new JsonArray(0) };
        var c = Assert.IsType<AdapterHubConfig>(AdapterFamilyTypes.Create("adapter", keys));
        var bn = Assert.IsType<BottleneckConfig>(Assert.Single(c.Parts));
        Assert.True(bn.MhAdapter && bn.OutputAdapter);
        Assert.Equal(8, bn.ReductionFactor);
        Assert.Equal("swish", bn.NonLinearity);
        Assert.Equal(new[] { 0 }, bn.LeaveOut);
        var u = Assert.IsType<AdapterHubConfig>(AdapterFamilyTypes.Create("unipelt", new Dictionary<string, JsonNode?>()));
        Assert.Equal(3, u.Parts.Count);
        Assert.All(u.Parts, p => Assert.True(p switch { HubPrefixConfig x => x.UseGating, BottleneckConfig x => x.UseGating, HubLoraConfig x => x.UseGating, _ => false }));
        Assert.IsType<PeftSharp.Tuners.BitFit.BitFitConfig>(AdapterFamilyTypes.Create("bitfit", new Dictionary<string, JsonNode?>()));
        Assert.Throws<PeftConfigException>(() => AdapterFamilyTypes.Create("adapter", new Dictionary<string, JsonNode?> { ["adapter_config"] = "nope" }));

        using var scope = NewDisposeScope();
        var dir = Case("llama-tiny", "fuse");
        var peft = AdapterFamilyTypes.FusionStage(AutoModel.FromPretrained(TestPaths.Model("llama-tiny")), new[] { Path.Combine(dir, "a"), Path.Combine(dir, "b") });
        Assert.All(peft.Model.named_parameters().Where(p => p.parameter.requires_grad), p => Assert.Contains("adapter_fusion_layer.a,b.", p.name));
    }

    /// <summary>GPT-2 has the same slots: bottleneck adapters and the AdapterHub prefix run there too (no fixture: behaviour checks).</summary>
    [Fact]
    public void Gpt2_slots_and_prefix_change_the_output_and_disable_restores_it()
    {
        using var scope = NewDisposeScope();
        using var _ = no_grad();
        using var cases = SafetensorsFile.Open(Path.Combine(TestPaths.Model("gpt2-tiny"), "cases.safetensors"));
        var inputs = new ModelInputs { InputIds = cases.Load("input_ids"), AttentionMask = cases.Load("attention_mask") };
        var baseLogits = AutoModel.FromPretrained(TestPaths.Model("gpt2-tiny")).Forward(inputs).Logits;
        manual_seed(0);
        var peft = PeftModel.Create(AutoModel.FromPretrained(TestPaths.Model("gpt2-tiny")),
            AdapterHubConfig.Of(new HubPrefixConfig { PrefixLength = 3, BottleneckSize = 8 }, BottleneckConfig.DoubleSeqBn() with { InitWeights = "houlsby" }));
        peft.eval();
        Assert.Equal(4, peft.AdapterLayers().Count(l => l.Layer is AdapterSlot));
        var logits = peft.Forward(inputs).Logits;
        Assert.Equal(baseLogits.shape, logits.shape);
        Assert.True(FixtureAssert.MaxAbsDiff(logits, baseLogits, inputs.AttentionMask) > 1e-4);
        using (peft.DisableAdapters()) FixtureAssert.Close(peft.Forward(inputs).Logits, baseLogits, inputs.AttentionMask, 1e-6, "disabled");
    }
}
