using System.Text.Json.Nodes;
using PeftSharp.IO;
using PeftSharp.Models;
using PeftSharp.Tuners;
using static TorchSharp.torch;

namespace PeftSharp.Tests.Tuners.Lora;

/// <summary>Every LoRA/DoRA adapter fixture made by peft 0.20.0: load, forward, merge, save.</summary>
public class LoraFixtureTests
{
    public static TheoryData<string, string> Cases => new()
    {
        { "llama-tiny", "lora_qv" },
        { "llama-tiny", "lora_all_linear_rslora" },
        { "llama-tiny", "lora_embedding" },
        { "llama-tiny", "lora_modules_to_save" },
        { "llama-tiny", "lora_patterns" },
        { "llama-tiny", "dora" },
        { "qwen2-tiny", "lora_all_linear" },
        { "gpt2-tiny", "lora_c_attn" },
        { "gpt2-tiny", "lora_bias_all" },
        { "bert-tiny-cls", "lora_qv" },
    };

    internal static (Tensor Ids, Tensor Mask) Inputs(string baseModel)
    {
        using var cases = SafetensorsFile.Open(Path.Combine(TestPaths.Model(baseModel), "cases.safetensors"));
        return (cases.Load("input_ids"), cases.Load("attention_mask"));
    }

    internal static Tensor? TokenTypes(string baseModel)
    {
        using var cases = SafetensorsFile.Open(Path.Combine(TestPaths.Model(baseModel), "cases.safetensors"));
        return cases.Contains("token_type_ids") ? cases.Load("token_type_ids") : null;
    }

    internal static Tensor Expected(string file, string key)
    {
        using var f = SafetensorsFile.Open(file);
        return f.Load(key);
    }

    [Theory]
    [MemberData(nameof(Cases))]
    public void Adapter_reproduces_logits_and_merged_logits(string baseModel, string caseName)
    {
        using var scope = NewDisposeScope();
        using var _ = no_grad();
        var dir = TestPaths.Data("adapters", baseModel, caseName);
        var expected = Path.Combine(dir, "expected.safetensors");
        var (ids, mask) = Inputs(baseModel);
        var peft = PeftModel.FromPretrained(AutoModel.FromPretrained(TestPaths.Model(baseModel)), dir);

        var tokenTypes = TokenTypes(baseModel);
        var logits = peft.Forward(new ModelInputs { InputIds = ids, AttentionMask = mask, TokenTypeIds = tokenTypes }).Logits;
        // Class logits ([batch, labels]) are compared everywhere, LM logits where the mask is 1.
        var compareMask = logits.dim() == 3 ? mask : null;
        FixtureAssert.Close(logits, Expected(expected, "logits"), compareMask, 1e-4, $"{caseName} logits");

        var merged = peft.MergeAndUnload();
        Assert.DoesNotContain(merged.named_modules(), m => m.module is IAdapterLayer);
        FixtureAssert.Close(merged.Forward(ids, mask, tokenTypes).Logits, Expected(expected, "merged_logits"), compareMask, 1e-4, $"{caseName} merged_logits");
    }

    [Theory]
    [MemberData(nameof(Cases))]
    public void Greedy_ids_match_peft_generate(string baseModel, string caseName)
    {
        var dir = TestPaths.Data("adapters", baseModel, caseName);
        if (baseModel == "bert-tiny-cls") return; // a classifier does not generate
        var fx = PeftSharp.Tests.Inference.GreedyFixture.FromFolder(dir);
        var peft = PeftModel.FromPretrained(AutoModel.FromPretrained(TestPaths.Model(baseModel)), dir);
        var gen = new PeftSharp.Inference.TextGenerator(peft.Model);
        Assert.Equal(fx.SingleOutput, gen.Generate(new[] { fx.SinglePrompt }, PeftSharp.Tests.Inference.GreedyFixture.Options).Sequences[0]);
        Assert.Equal(fx.BatchOutput, gen.Generate(fx.BatchUnpadded, PeftSharp.Tests.Inference.GreedyFixture.Options).Sequences);
    }

    [Theory]
    [MemberData(nameof(Cases))]
    public void Saved_adapter_has_peft_keys_shapes_dtypes_and_config(string baseModel, string caseName)
    {
        using var scope = NewDisposeScope();
        var dir = TestPaths.Data("adapters", baseModel, caseName);
        var peft = PeftModel.FromPretrained(AutoModel.FromPretrained(TestPaths.Model(baseModel)), dir);
        var outDir = TestPaths.TempDir();
        peft.SaveAdapter(outDir);

        AssertSameAdapterFiles(dir, outDir, compareValues: true);
    }

    /// <summary>Same tensor names, shapes and dtypes (and optionally values), same config keys and values.</summary>
    internal static void AssertSameAdapterFiles(string expectedDir, string actualDir, bool compareValues)
    {
        using var want = SafetensorsFile.Open(Path.Combine(expectedDir, AdapterFiles.WeightsFile));
        using var got = SafetensorsFile.Open(Path.Combine(actualDir, AdapterFiles.WeightsFile));
        Assert.Equal(want.Keys.OrderBy(k => k, StringComparer.Ordinal), got.Keys.OrderBy(k => k, StringComparer.Ordinal));
        Assert.Equal("pt", got.Metadata["format"]);
        foreach (var k in want.Keys)
        {
            Assert.Equal(want.Entry(k).Shape, got.Entry(k).Shape);
            Assert.Equal(want.Entry(k).DType, got.Entry(k).DType);
            if (compareValues)
            {
                using var a = want.Load(k);
                using var b = got.Load(k);
                Assert.True(a.equal(b).all().item<bool>(), $"{k} differs after a load/save round trip");
            }
        }

        var wantConfig = (JsonObject)JsonNode.Parse(File.ReadAllText(Path.Combine(expectedDir, AdapterFiles.ConfigFile)))!;
        var gotConfig = (JsonObject)JsonNode.Parse(File.ReadAllText(Path.Combine(actualDir, AdapterFiles.ConfigFile)))!;
        Assert.Equal(wantConfig.Select(kv => kv.Key).OrderBy(k => k, StringComparer.Ordinal), gotConfig.Select(kv => kv.Key).OrderBy(k => k, StringComparer.Ordinal));
        foreach (var (key, value) in wantConfig)
        {
            var other = gotConfig[key];
            if (key is "target_modules" or "modules_to_save" && value is JsonArray wa && other is JsonArray ga)
                Assert.Equal(wa.Select(x => x!.GetValue<string>()).OrderBy(x => x), ga.Select(x => x!.GetValue<string>()).OrderBy(x => x));
            else
                Assert.True(JsonNode.DeepEquals(value, other), $"config '{key}': expected {value?.ToJsonString() ?? "null"}, got {other?.ToJsonString() ?? "null"}");
        }
    }
}
