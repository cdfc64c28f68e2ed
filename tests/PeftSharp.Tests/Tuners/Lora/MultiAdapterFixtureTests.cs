using PeftSharp.Models;
using PeftSharp.Tuners;
using static TorchSharp.torch;

namespace PeftSharp.Tests.Tuners.Lora;

/// <summary>fixtures multi/llama-tiny: adapters a, b, c; a mixed batch; weighted combinations.</summary>
public class MultiAdapterFixtureTests
{
    static string Dir(params string[] parts) => TestPaths.Data(new[] { "multi", "llama-tiny" }.Concat(parts).ToArray());
    static string ExpectedFile => Dir("expected.safetensors");

    static PeftModel LoadABC() => PeftModel.LoadWithAdapters(AutoModel.FromPretrained(TestPaths.Model("llama-tiny")),
        new[] { ("a", Dir("a")), ("b", Dir("b")), ("c", Dir("c")) });

    static Tensor Logits(PeftModel peft, Tensor ids, Tensor mask, IReadOnlyList<string>? rows = null) =>
        peft.Forward(new ModelInputs { InputIds = ids, AttentionMask = mask }, rows).Logits;

    [Fact]
    public void Each_adapter_base_and_mixed_batch_match()
    {
        using var scope = NewDisposeScope();
        using var _ = no_grad();
        var (ids, mask) = LoraFixtureTests.Inputs("llama-tiny");
        var peft = LoadABC();
        foreach (var name in new[] { "a", "b", "c" })
        {
            peft.SetAdapter(name);
            FixtureAssert.Close(Logits(peft, ids, mask), LoraFixtureTests.Expected(ExpectedFile, $"logits_{name}"), mask, 1e-4, $"logits_{name}");
        }
        using (peft.DisableAdapters())
            FixtureAssert.Close(Logits(peft, ids, mask), LoraFixtureTests.Expected(ExpectedFile, "logits_base"), mask, 1e-4, "logits_base");

        var mixed = Logits(peft, ids, mask, new[] { "a", "b", RowAdapters.Base });
        FixtureAssert.Close(mixed, LoraFixtureTests.Expected(ExpectedFile, "mixed_logits"), mask, 1e-4, "mixed_logits");
    }

    [Theory]
    [InlineData("cat", "cat", "a", "b")]
    [InlineData("svd", "svd", "a", "b")]
    [InlineData("linear", "linear", "a", "c")]
    public void Weighted_combination_matches_peft(string combination, string folder, string first, string second)
    {
        using var scope = NewDisposeScope();
        var (ids, mask) = LoraFixtureTests.Inputs("llama-tiny");
        var peft = LoadABC();
        peft.AddWeightedAdapter(new[] { first, second }, new[] { 0.7, 0.3 }, folder, combination);
        peft.SetAdapter(folder);
        using (no_grad())
            FixtureAssert.Close(Logits(peft, ids, mask), LoraFixtureTests.Expected(ExpectedFile, $"{combination}_logits"), mask, 1e-4, $"{combination}_logits");

        // Same file layout and config as peft's saved combination (svd factors are only defined up to sign: no value check).
        var outDir = TestPaths.TempDir();
        peft.SaveAdapter(outDir, folder);
        LoraFixtureTests.AssertSameAdapterFiles(Dir(folder), Path.Combine(outDir, folder), compareValues: false);
    }

    [Fact]
    public void Linear_combination_of_different_ranks_is_refused()
    {
        using var scope = NewDisposeScope();
        var peft = LoadABC();
        var e = Assert.Throws<PeftSharpException>(() => peft.AddWeightedAdapter(new[] { "a", "b" }, new[] { 0.7, 0.3 }, "ab", "linear"));
        Assert.Contains("same r value", e.Message);
        Assert.DoesNotContain("ab", peft.Adapters);
    }
}
