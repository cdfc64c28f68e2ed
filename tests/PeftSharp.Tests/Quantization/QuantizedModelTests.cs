using System.Text.Json.Nodes;
using PeftSharp.IO;
using PeftSharp.Models;
using PeftSharp.Quantization;
using TorchSharp;
using static TorchSharp.torch;

namespace PeftSharp.Tests.Quantization;

/// <summary>Whole 4-bit checkpoints made by transformers + bitsandbytes (TestData/quant/llama-tiny-*).</summary>
public class QuantizedModelTests
{
    static string Case(string name) => TestPaths.Data("quant", name);

    static BitsAndBytesConfig ConfigOf(string name) => name switch
    {
        "llama-tiny-nf4-dq" => BitsAndBytesConfig.NF4(doubleQuant: true),
        _ => new BitsAndBytesConfig { LoadIn4bit = true, Bnb4bitQuantType = "fp4", Bnb4bitComputeDType = "float32" },
    };

    static byte[] Bytes(Tensor t) => t.contiguous().bytes.ToArray();

    [Theory]
    [InlineData("llama-tiny-nf4-dq")]
    [InlineData("llama-tiny-fp4")]
    public void Prequantized_checkpoint_gives_transformers_logits_and_weights(string name)
    {
        using var scope = NewDisposeScope();
        using var model = AutoModel.FromPretrained(Case(name));
        var layers = QuantizedModelLoader.QuantizedLayers(model).ToList();
        Assert.Equal(14, layers.Count);
        Assert.DoesNotContain(layers, l => l.Name == "lm_head");

        using var deq = SafetensorsFile.Open(Path.Combine(Case(name), "dequantized.safetensors"));
        foreach (var (layerName, layer) in layers)
            Assert.True(Bytes(deq.Load(layerName + ".weight")).AsSpan().SequenceEqual(Bytes(layer.Dequantize(ScalarType.Float32))), $"{layerName} dequantized");

        using var cases = SafetensorsFile.Open(TestPaths.Data("models", "llama-tiny", "cases.safetensors"));
        using var expected = SafetensorsFile.Open(Path.Combine(Case(name), "expected.safetensors"));
        var mask = cases.Load("attention_mask");
        using var _ = no_grad();
        var logits = model.Forward(cases.Load("input_ids"), mask).Logits;
        FixtureAssert.Close(logits, expected.Load("logits"), mask, 1e-4, $"{name} logits");
    }

    [Theory]
    [InlineData("llama-tiny-nf4-dq")]
    [InlineData("llama-tiny-fp4")]
    public void Quantizing_on_load_then_saving_writes_the_bitsandbytes_file(string name)
    {
        using var scope = NewDisposeScope();
        var outDir = TestPaths.TempDir();
        using (var model = AutoModel.FromPretrained(TestPaths.Model("llama-tiny"), quantization: ConfigOf(name)))
            AutoModel.SavePretrained(model, outDir);

        using var expected = SafetensorsFile.Open(Path.Combine(Case(name), "model.safetensors"));
        using var actual = SafetensorsFile.Open(Path.Combine(outDir, "model.safetensors"));
        Assert.Equal(expected.Keys.OrderBy(k => k, StringComparer.Ordinal), actual.Keys.OrderBy(k => k, StringComparer.Ordinal));
        foreach (var k in expected.Keys)
        {
            Assert.Equal(expected.Entry(k).DType, actual.Entry(k).DType);
            Assert.Equal(expected.Entry(k).Shape, actual.Entry(k).Shape);
            Assert.True(expected.ReadBytes(k).AsSpan().SequenceEqual(actual.ReadBytes(k)), $"{k} differs");
        }
        // Same header order and padding too: the whole file is byte-identical.
        Assert.Equal(File.ReadAllBytes(Path.Combine(Case(name), "model.safetensors")), File.ReadAllBytes(Path.Combine(outDir, "model.safetensors")));

        var want = JsonNode.Parse(File.ReadAllText(Path.Combine(Case(name), "config.json")))!["quantization_config"]!.ToJsonString();
        var got = JsonNode.Parse(File.ReadAllText(Path.Combine(outDir, "config.json")))!["quantization_config"]!.ToJsonString();
        Assert.Equal(want, got);
        Assert.Contains("\"llm_int8_threshold\": 6.0", File.ReadAllText(Path.Combine(outDir, "config.json")));

        // And it loads back as the pre-quantized checkpoint does.
        using var reloaded = AutoModel.FromPretrained(outDir);
        Assert.Equal(14, QuantizedModelLoader.QuantizedLayers(reloaded).Count());
    }

    [Fact]
    public void Loaded_checkpoint_resaves_byte_identical()
    {
        var outDir = TestPaths.TempDir();
        using (var model = AutoModel.FromPretrained(Case("llama-tiny-nf4-dq")))
            AutoModel.SavePretrained(model, outDir);
        Assert.Equal(File.ReadAllBytes(Path.Combine(Case("llama-tiny-nf4-dq"), "model.safetensors")), File.ReadAllBytes(Path.Combine(outDir, "model.safetensors")));
    }

    [Fact]
    public void Linear4bit_passes_gradients_to_the_input_only()
    {
        using var scope = NewDisposeScope();
        var w = randn(48, 64) * 0.05f;
        var bias = randn(48);
        var layer = Linear4bit.Quantize(w, bias, QuantType.NF4, doubleQuant: true);
        Assert.Empty(layer.parameters().Where(p => p.requires_grad));
        Assert.Equal(new[] { "bias", "weight", "weight.absmax", "weight.nested_absmax", "weight.nested_quant_map", "weight.quant_map", "weight.quant_state.bitsandbytes__nf4" },
            layer.state_dict().Keys.Order(StringComparer.Ordinal));

        var x = randn(3, 64).requires_grad_(true);
        var y = layer.call(x);
        var reference = nn.functional.linear(x.detach(), layer.Dequantize(), bias);
        Assert.Equal(0.0, (y - reference).abs().max().item<float>());
        y.sum().backward();
        FixtureAssert.Close(x.grad!, layer.Dequantize().sum(dim: 0).expand(3, 64), atol: 1e-5, what: "input gradient");

        // bf16 compute: input cast in, output cast back.
        layer.ComputeDType = ScalarType.BFloat16;
        var yb = layer.call(x.detach());
        Assert.Equal(ScalarType.Float32, yb.dtype);
        FixtureAssert.Close(yb, reference, atol: 0.1, what: "bf16 compute");
    }

    [Fact]
    public void Skip_rule_follows_transformers()
    {
        var c = BitsAndBytesConfig.NF4();
        Assert.True(c.Skips("lm_head"));
        Assert.False(c.Skips("model.layers.0.mlp.down_proj"));
        var custom = c with { LlmInt8SkipModules = new[] { "mlp", "q_proj" } };
        Assert.True(custom.Skips("model.layers.0.mlp.down_proj"));
        Assert.True(custom.Skips("model.layers.1.self_attn.q_proj"));
        Assert.False(custom.Skips("model.layers.1.self_attn.k_proj"));
        Assert.False(custom.Skips("lm_head"));

        using var model = AutoModel.FromPretrained(TestPaths.Model("llama-tiny"), quantization: custom);
        var names = QuantizedModelLoader.QuantizedLayers(model).Select(l => l.Name).ToList();
        Assert.Equal(new[] { "model.layers.0.self_attn.k_proj", "model.layers.0.self_attn.v_proj", "model.layers.0.self_attn.o_proj",
            "model.layers.1.self_attn.k_proj", "model.layers.1.self_attn.v_proj", "model.layers.1.self_attn.o_proj", "lm_head" }.Order(), names.Order());
    }

    [Fact]
    public void Module_surgery_keeps_key_order_and_checks_field_types()
    {
        using var model = AutoModel.FromPretrained(TestPaths.Model("llama-tiny"));
        var before = model.named_modules().Select(m => m.name).ToList();
        var name = "model.layers.0.self_attn.k_proj";
        var old = (TorchSharp.Modules.Linear)ModuleSurgery.Get(model, name);
        var q = Linear4bit.Quantize(old.weight!, null, QuantType.NF4, false);
        Assert.Same(old, ModuleSurgery.Replace(model, name, q));
        Assert.Same(q, ModuleSurgery.Get(model, name));
        // The registry entry is replaced in place: module order (and so named_modules/state_dict order) is unchanged.
        Assert.Equal(before, model.named_modules().Select(m => m.name));
        Assert.Contains(name + ".weight.absmax", model.state_dict().Keys);

        var e = Assert.Throws<PeftSharpException>(() => ModuleSurgery.Get(model, "model.layers.9"));
        Assert.Contains("layers.9", e.Message);
        e = Assert.Throws<PeftSharpException>(() => ModuleSurgery.Replace(model, "model.layers.0", q));
        Assert.Contains("ModuleList", e.Message);
    }

    [Fact]
    public void Damaged_checkpoint_is_reported()
    {
        var dir = TestPaths.TempDir();
        foreach (var f in Directory.GetFiles(Case("llama-tiny-fp4"))) File.Copy(f, Path.Combine(dir, Path.GetFileName(f)));
        // Drop one quant_state blob: the loader names the module and what is missing.
        using (var src = SafetensorsFile.Open(Path.Combine(Case("llama-tiny-fp4"), "model.safetensors")))
        {
            var all = src.LoadAll().Where(kv => kv.Key != "model.layers.1.mlp.up_proj.weight.quant_state.bitsandbytes__fp4");
            SafetensorsWriter.Save(Path.Combine(dir, "model.safetensors"), all, new Dictionary<string, string> { ["format"] = "pt" });
        }
        var e = Assert.Throws<PeftFormatException>(() => AutoModel.FromPretrained(dir));
        Assert.Contains("model.layers.1.mlp.up_proj.weight", e.Message);
    }
}
