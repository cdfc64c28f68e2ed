using PeftSharp.IO;
using PeftSharp.Models;
using PeftSharp.Tuners;
using PeftSharp.Tuners.Vera;
using static TorchSharp.torch;

namespace PeftSharp.Tests.Tuners.Variants;

public class VeraTests
{
    [Fact]
    public void Projections_drawn_from_the_seed_are_bit_identical_to_peft()
    {
        using var scope = NewDisposeScope();
        using var file = SafetensorsFile.Open(TestPaths.Data("adapters", "llama-tiny", "vera", AdapterFiles.WeightsFile));
        var p = VeraProjections.Generate(16, 64, 64, seed: 0, CPU);
        Assert.True(p.A.equal(file.Load("base_model.vera_A")).all().item<bool>(), "vera_A differs from peft's draw");
        Assert.True(p.B.equal(file.Load("base_model.vera_B")).all().item<bool>(), "vera_B differs from peft's draw");
    }

    [Fact]
    public void New_adapter_is_a_no_op_with_shared_sliced_projections_and_peft_counts()
    {
        using var scope = NewDisposeScope();
        var model = AutoModel.FromPretrained(TestPaths.Model("llama-tiny"));
        var config = new VeraConfig { R = 16, TargetModules = StringOrList.Of("q_proj", "v_proj") };
        var peft = PeftModel.Create(model, config);
        var layers = peft.AdapterLayers().Select(l => (VeraLinear)l.Layer).ToList();
        Assert.Equal(4, layers.Count);
        Assert.All(layers, l => Assert.Same(layers[0].Projections("default"), l.Projections("default")));
        Assert.Equal(new long[] { 16, 64 }, layers[0].Projections("default").A.shape);
        Assert.Equal(new long[] { 64, 16 }, layers[0].Projections("default").B.shape);
        Assert.All(layers, l => Assert.Equal(0.1f, l.LambdaD("default")[0].item<float>()));
        // λ_b = 0 → ΔW = 0; trainable = Σ (out + r) = 2·(64+16) + 2·(32+16).
        Assert.All(layers, l => Assert.Equal(0, l.DeltaWeight("default").abs().max().item<float>()));
        Assert.Equal(256, peft.TrainableParameterCounts().Trainable);
        var report = peft.ParameterReport();
        Assert.All(report.Modules, m => Assert.Equal("vera", m.Kind));
        Assert.All(report.Modules, m => Assert.Equal(0, m.DeltaRank));
        // Saved once at model level, under peft's names.
        var keys = peft.AdapterStateDict("default").Keys.ToList();
        Assert.Contains("base_model.vera_A", keys);
        Assert.Equal(10, keys.Count);
    }

    [Fact]
    public void Missing_projection_in_the_file_is_an_error_naming_the_key()
    {
        using var scope = NewDisposeScope();
        var dir = TestPaths.TempDir();
        var src = TestPaths.Data("adapters", "llama-tiny", "vera");
        File.Copy(Path.Combine(src, AdapterFiles.ConfigFile), Path.Combine(dir, AdapterFiles.ConfigFile));
        using (var f = SafetensorsFile.Open(Path.Combine(src, AdapterFiles.WeightsFile)))
            SafetensorsWriter.Save(Path.Combine(dir, AdapterFiles.WeightsFile), f.Keys.Where(k => k != "base_model.vera_B").ToDictionary(k => k, k => f.Load(k)), new Dictionary<string, string> { ["format"] = "pt" });
        var e = Assert.Throws<PeftFormatException>(() => PeftModel.FromPretrained(AutoModel.FromPretrained(TestPaths.Model("llama-tiny")), dir));
        Assert.Contains("base_model.vera_B", e.Message);
    }
}
