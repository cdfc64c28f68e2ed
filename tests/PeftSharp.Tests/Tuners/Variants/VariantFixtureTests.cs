using PeftSharp.Inference;
using PeftSharp.Models;
using PeftSharp.Tests.Inference;
using PeftSharp.Tests.Tuners.Lora;
using PeftSharp.Tuners;
using static TorchSharp.torch;

namespace PeftSharp.Tests.Tuners.Variants;

/// <summary>The VeRA and AdaLoRA adapter fixtures made by peft 0.20.0: load, forward, greedy, merge, save.</summary>
public class VariantFixtureTests
{
    public static TheoryData<string> Cases => new() { "vera", "adalora" };

    static string Dir(string caseName) => TestPaths.Data("adapters", "llama-tiny", caseName);

    static PeftModel Load(string caseName) => PeftModel.FromPretrained(AutoModel.FromPretrained(TestPaths.Model("llama-tiny")), Dir(caseName));

    [Theory]
    [MemberData(nameof(Cases))]
    public void Adapter_reproduces_logits_and_merged_logits(string caseName)
    {
        using var scope = NewDisposeScope();
        using var _ = no_grad();
        var expected = Path.Combine(Dir(caseName), "expected.safetensors");
        var (ids, mask) = LoraFixtureTests.Inputs("llama-tiny");
        var peft = Load(caseName);

        var logits = peft.Forward(new ModelInputs { InputIds = ids, AttentionMask = mask }).Logits;
        FixtureAssert.Close(logits, LoraFixtureTests.Expected(expected, "logits"), mask, 1e-4, $"{caseName} logits");

        // Merge then unmerge restores the adapter's own outputs; merge_and_unload gives peft's merged logits.
        peft.Merge();
        FixtureAssert.Close(peft.Forward(new ModelInputs { InputIds = ids, AttentionMask = mask }).Logits, logits, mask, 1e-4, "merged in place");
        peft.Unmerge();
        FixtureAssert.Close(peft.Forward(new ModelInputs { InputIds = ids, AttentionMask = mask }).Logits, logits, mask, 1e-5, "unmerged");

        var merged = peft.MergeAndUnload();
        Assert.DoesNotContain(merged.named_modules(), m => m.module is IAdapterLayer);
        FixtureAssert.Close(merged.Forward(ids, mask).Logits, LoraFixtureTests.Expected(expected, "merged_logits"), mask, 1e-4, $"{caseName} merged_logits");
    }

    [Theory]
    [MemberData(nameof(Cases))]
    public void Greedy_ids_match_peft_generate(string caseName)
    {
        using var scope = NewDisposeScope();
        var fx = GreedyFixture.FromFolder(Dir(caseName));
        var peft = Load(caseName);
        var gen = new TextGenerator(peft.Model);
        Assert.Equal(fx.SingleNew, gen.Generate(new[] { fx.SinglePrompt }, GreedyFixture.Options).NewTokens[0]);
        Assert.Equal(fx.BatchNew, gen.Generate(fx.BatchUnpadded, GreedyFixture.Options).NewTokens);
    }

    [Theory]
    [MemberData(nameof(Cases))]
    public void Saved_adapter_has_peft_keys_shapes_and_config(string caseName)
    {
        using var scope = NewDisposeScope();
        var peft = Load(caseName);
        var outDir = TestPaths.TempDir();
        peft.SaveAdapter(outDir);
        LoraFixtureTests.AssertSameAdapterFiles(Dir(caseName), outDir, compareValues: true);
    }

    [Theory]
    [MemberData(nameof(Cases))]
    public void Mixed_batch_rows_match_single_adapter_and_base_runs(string caseName)
    {
        using var scope = NewDisposeScope();
        using var _ = no_grad();
        var (ids, mask) = LoraFixtureTests.Inputs("llama-tiny");
        var peft = Load(caseName);
        peft.LoadAdapter(Dir(caseName), "second");
        var inputs = new ModelInputs { InputIds = ids, AttentionMask = mask };
        var adapter = peft.Forward(inputs).Logits;
        Tensor baseLogits;
        using (peft.DisableAdapters()) baseLogits = peft.Forward(inputs).Logits;

        var mixed = peft.Forward(inputs, new[] { "default", RowAdapters.Base, "second" }).Logits;
        var rowMask = mask;
        FixtureAssert.Close(mixed[0], adapter[0], rowMask[0], 1e-5, "row 0 (default)");
        FixtureAssert.Close(mixed[1], baseLogits[1], rowMask[1], 1e-5, "row 1 (base)");
        FixtureAssert.Close(mixed[2], adapter[2], rowMask[2], 1e-5, "row 2 (second = same weights)");
    }
}
