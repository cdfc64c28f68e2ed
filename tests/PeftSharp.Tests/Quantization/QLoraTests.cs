using System.Text.Json.Nodes;
using PeftSharp.IO;
using PeftSharp.Models;
using PeftSharp.Quantization;
using PeftSharp.Tuners;
using PeftSharp.Tuners.Lora;
using static TorchSharp.torch;

namespace PeftSharp.Tests.Quantization;

/// <summary>LoRA/DoRA on 4-bit layers (QLoRA): the peft fixture, merging into a float model, training, k-bit preparation.</summary>
public class QLoraTests
{
    static string Case(string name) => TestPaths.Data("quant", name);

    static (Tensor Ids, Tensor Mask) Inputs()
    {
        using var cases = SafetensorsFile.Open(TestPaths.Data("models", "llama-tiny", "cases.safetensors"));
        return (cases.Load("input_ids"), cases.Load("attention_mask"));
    }

    static Tensor ExpectedLogits()
    {
        using var f = SafetensorsFile.Open(Path.Combine(Case("llama-tiny-nf4-dq-lora"), "expected.safetensors"));
        return f.Load("logits");
    }

    [Fact]
    public void Peft_adapter_on_the_nf4_checkpoint_gives_peft_logits()
    {
        using var scope = NewDisposeScope();
        using var _ = no_grad();
        var (ids, mask) = Inputs();
        var peft = PeftModel.FromPretrained(AutoModel.FromPretrained(Case("llama-tiny-nf4-dq")), Case("llama-tiny-nf4-dq-lora"));
        var wrapped = peft.AdapterLayers().Select(l => l.Layer).OfType<LoraLinear>().ToList();
        Assert.Equal(4, wrapped.Count);
        Assert.All(wrapped, l => Assert.IsType<Linear4bit>(l.BaseLayer));

        var logits = peft.Forward(new ModelInputs { InputIds = ids, AttentionMask = mask }).Logits;
        FixtureAssert.Close(logits, ExpectedLogits(), mask, 1e-4, "QLoRA logits");

        // peft counts each packed byte as two parameters: the same total as the float model plus the adapter.
        using var floatModel = AutoModel.FromPretrained(TestPaths.Model("llama-tiny"));
        long adapter = 2 * (8 * 64 + 64 * 8) + 2 * (8 * 64 + 32 * 8);
        Assert.Equal((0L, floatModel.ParameterCount() + adapter), peft.TrainableParameterCounts());
        var report = peft.ParameterReport();
        Assert.Equal(4, report.Modules.Count);
        Assert.All(report.Modules, m => Assert.Equal((8, 8L), (m.R, m.DeltaRank)));
        // The adapter really acts (the fixture's lora_B is random): the 4-bit base alone is far off.
        using (peft.DisableAdapters())
            Assert.True((peft.Forward(new ModelInputs { InputIds = ids, AttentionMask = mask }).Logits - ExpectedLogits()).abs().max().item<float>() > 0.1f);
    }

    [Fact]
    public void Merge_and_unload_gives_a_float_model_with_the_same_logits()
    {
        using var scope = NewDisposeScope();
        using var _ = no_grad();
        var (ids, mask) = Inputs();
        var peft = PeftModel.FromPretrained(AutoModel.FromPretrained(Case("llama-tiny-nf4-dq")), Case("llama-tiny-nf4-dq-lora"));

        var savedDir = TestPaths.TempDir();
        peft.SaveMerged(savedDir);
        var merged = peft.MergeAndUnload();
        Assert.Empty(QuantizedModelLoader.QuantizedLayers(merged));
        Assert.DoesNotContain(merged.named_modules(), m => m.module is IAdapterLayer);
        Assert.Null(merged.Config.Raw["quantization_config"]);
        FixtureAssert.Close(merged.Forward(ids, mask).Logits, ExpectedLogits(), mask, 1e-4, "merged QLoRA logits");

        Assert.Null(JsonNode.Parse(File.ReadAllText(Path.Combine(savedDir, "config.json")))!["quantization_config"]);
        using (var file = SafetensorsFile.Open(Path.Combine(savedDir, "model.safetensors")))
        {
            Assert.DoesNotContain(file.Keys, k => k.Contains(".absmax") || k.Contains("quant_state"));
            Assert.Equal(2, file.Entry("model.layers.0.mlp.gate_proj.weight").Shape.Length);
        }
        using var reloaded = AutoModel.FromPretrained(savedDir);
        Assert.Empty(QuantizedModelLoader.QuantizedLayers(reloaded));
        FixtureAssert.Close(reloaded.Forward(ids, mask).Logits, ExpectedLogits(), mask, 1e-4, "saved merged QLoRA logits");
    }

    [Fact]
    public void Dora_on_4bit_starts_from_the_dequantized_row_norms_and_merges_exactly()
    {
        using var scope = NewDisposeScope();
        using var _ = no_grad();
        var (ids, mask) = Inputs();
        var model = AutoModel.FromPretrained(Case("llama-tiny-nf4-dq"));
        var peft = PeftModel.Create(model, new LoraConfig { R = 4, LoraAlpha = 8, TargetModules = StringOrList.Of(new[] { "q_proj", "down_proj" }), UseDora = true });
        var layer = peft.AdapterLayers().Select(l => l.Layer).OfType<LoraLinear>().First();
        var deq = ((Linear4bit)layer.BaseLayer).Dequantize();
        Assert.True(linalg.norm(deq, dims: new long[] { 1 }).allclose(layer.Magnitude("default")!, 1e-6, 1e-6));

        // Non-trivial adapter, then the unmerged forward must equal the merged float model.
        foreach (var (_, l) in peft.AdapterLayers())
            if (l is LoraLinear ll) { ll.B("default").normal_(0, 0.05); ll.Magnitude("default")!.mul_(1.1); }
        var unmerged = peft.Forward(new ModelInputs { InputIds = ids, AttentionMask = mask }).Logits;
        var merged = peft.MergeAndUnload();
        FixtureAssert.Close(merged.Forward(ids, mask).Logits, unmerged, mask, 1e-4, "DoRA 4-bit merged vs unmerged");
    }

    [Fact]
    public void Lora_on_4bit_trains_adapters_only()
    {
        using var scope = NewDisposeScope();
        var (ids, mask) = Inputs();
        var model = AutoModel.FromPretrained(Case("llama-tiny-nf4-dq"));
        using var prep = KbitTraining.Prepare(model);
        Assert.True(prep.InputGradientsEnabled);
        var peft = PeftModel.Create(model, new LoraConfig { R = 8, LoraAlpha = 16, TargetModules = StringOrList.Of("all-linear") });
        Assert.Equal(14, peft.AdapterLayers().Count());
        var packedBefore = QuantizedModelLoader.QuantizedLayers(model).Select(l => l.Layer.PackedWeight.clone()).ToList();
        var trainable = peft.parameters().Where(p => p.requires_grad).ToList();
        Assert.All(trainable, p => Assert.Equal(ScalarType.Float32, p.dtype));
        Assert.Equal(14 * 2, trainable.Count);

        peft.train();
        var opt = optim.AdamW(trainable, lr: 2e-2);
        var labels = ids.clone();
        float first = 0, last = 0;
        for (int step = 0; step < 8; step++)
        {
            opt.zero_grad();
            var logits = peft.Forward(new ModelInputs { InputIds = ids, AttentionMask = mask }).Logits;
            var loss = nn.functional.cross_entropy(logits[.., ..^1].reshape(-1, logits.shape[^1]), labels[.., 1..].reshape(-1));
            loss.backward();
            if (step == 0) first = loss.item<float>();
            last = loss.item<float>();
            opt.step();
        }
        Assert.True(last < first * 0.9f, $"loss {first} -> {last}");
        var after = QuantizedModelLoader.QuantizedLayers(model).Select(l => l.Layer.PackedWeight).ToList();
        for (int i = 0; i < after.Count; i++) Assert.True(after[i].eq(packedBefore[i]).all().item<bool>(), "4-bit weights must not change");
    }

    [Fact]
    public void Qlora_learns_with_8bit_paged_adamw()
    {
        using var scope = NewDisposeScope();
        var (ids, mask) = Inputs();
        var model = AutoModel.FromPretrained(Case("llama-tiny-nf4-dq"));
        using var prep = KbitTraining.Prepare(model);
        // r=64 makes each A 64x64 = 4096 elements: the smallest size bnb keeps in 8 bits.
        var peft = PeftModel.Create(model, new LoraConfig { R = 64, LoraAlpha = 16, TargetModules = StringOrList.Of("q_proj", "v_proj") });
        var trainable = peft.named_parameters().Where(p => p.parameter.requires_grad).Select(p => (p.name, (Tensor)p.parameter)).ToList();
        using var opt = new PeftSharp.Training.Optimizers.BnbAdamW(trainable, lr: 1e-2, options: PeftSharp.Training.Optimizers.BnbAdamWOptions.FromOptimName("paged_adamw_8bit"));
        peft.train();
        float first = 0, last = 0;
        for (int step = 0; step < 8; step++)
        {
            using var stepScope = NewDisposeScope();
            var logits = peft.Forward(new ModelInputs { InputIds = ids, AttentionMask = mask }).Logits;
            var loss = nn.functional.cross_entropy(logits[.., ..^1].reshape(-1, logits.shape[^1]), ids[.., 1..].reshape(-1));
            loss.backward();
            opt.Step();
            opt.ZeroGrad();
            if (step == 0) first = loss.item<float>();
            last = loss.item<float>();
        }
        Assert.True(last < first * 0.9f, $"loss {first} -> {last}");
        // The four A matrices (4096 elements) hold 8-bit state; the B matrices (64x64 and 32x64) too or float32 below 4096.
        long fp32Bytes = trainable.Sum(t => t.Item2.numel()) * 8;
        Assert.True(opt.StateBytes < fp32Bytes * 0.6, $"state {opt.StateBytes} B vs fp32 {fp32Bytes} B");
    }

    [Fact]
    public void Prepare_casts_half_parameters_to_float32_and_freezes_them()
    {
        using var scope = NewDisposeScope();
        var model = AutoModel.FromPretrained(TestPaths.Model("llama-tiny"), dtype: ScalarType.BFloat16,
            quantization: BitsAndBytesConfig.NF4(doubleQuant: true, computeDType: "bfloat16"));
        Assert.Contains(model.parameters(), p => p.dtype == ScalarType.BFloat16);
        using var prep = KbitTraining.Prepare(model, useGradientCheckpointing: false);
        Assert.False(prep.InputGradientsEnabled);
        Assert.False(prep.GradientCheckpointing);
        Assert.All(model.parameters(), p => { Assert.Equal(ScalarType.Float32, p.dtype); Assert.False(p.requires_grad); });
        Assert.Contains("model.norm.weight", prep.CastToFloat32);
        Assert.Contains("model.embed_tokens.weight", prep.CastToFloat32);
        Assert.All(QuantizedModelLoader.QuantizedLayers(model), l => Assert.Equal(ScalarType.Byte, l.Layer.PackedWeight.dtype));
        // Still runs: the 4-bit layers compute in bf16 and hand back float32.
        var (ids, mask) = Inputs();
        using var _ = no_grad();
        Assert.Equal(ScalarType.Float32, model.Forward(ids, mask).Logits.dtype);
    }

    [Fact]
    public void Llama_factory_quantization_keys_map_to_bitsandbytes_config()
    {
        Assert.Null(BitsAndBytesConfig.FromLlamaFactory(null));
        var c = BitsAndBytesConfig.FromLlamaFactory(4, computeDType: "bfloat16")!;
        Assert.Equal((true, QuantType.NF4, true, ScalarType.BFloat16), (c.LoadIn4bit, c.QuantType, c.Bnb4bitUseDoubleQuant, c.ComputeDType));
        var fp4 = BitsAndBytesConfig.FromLlamaFactory(4, "fp4", doubleQuantization: false)!;
        Assert.Equal((QuantType.FP4, false, ScalarType.Float32), (fp4.QuantType, fp4.Bnb4bitUseDoubleQuant, fp4.ComputeDType));
        Assert.Contains("quantization_bit 8", Assert.Throws<PeftConfigException>(() => BitsAndBytesConfig.FromLlamaFactory(8, source: "qlora.yaml")).Message);
        Assert.Contains("quantization_type 'int4'", Assert.Throws<PeftConfigException>(() => BitsAndBytesConfig.FromLlamaFactory(4, "int4")).Message);
    }
}
