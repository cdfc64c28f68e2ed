using System.Text.Json.Nodes;
using PeftSharp.IO;
using PeftSharp.Models;
using static TorchSharp.torch;

namespace PeftSharp.Tests.Models;

public class GPT2Tests
{
    static (PreTrainedModel Model, SafetensorsFile Cases) Load(string name, ScalarType dtype = ScalarType.Float32)
    {
        var dir = TestPaths.Model(name);
        return (AutoModel.FromPretrained(dir, dtype: dtype), SafetensorsFile.Open(Path.Combine(dir, "cases.safetensors")));
    }

    [Fact]
    public void Logits_and_hidden_states_match_transformers()
    {
        using var scope = NewDisposeScope();
        var (model, cases) = Load("gpt2-tiny");
        using var _c = cases;
        Assert.IsType<GPT2LMHeadModel>(model);
        var mask = cases.Load("attention_mask");
        using var _ = no_grad();
        var output = model.Forward(new ModelInputs { InputIds = cases.Load("input_ids"), AttentionMask = mask, OutputHiddenStates = true });
        FixtureAssert.Close(output.Logits, cases.Load("logits"), mask, 1e-4, "gpt2 logits");
        Assert.Equal(3, output.HiddenStates!.Count);
        for (int i = 0; i < output.HiddenStates.Count; i++)
            FixtureAssert.Close(output.HiddenStates[i], cases.Load($"hidden_states.{i}"), mask, 1e-4, $"gpt2 hidden_states.{i}");
    }

    [Fact]
    public void Config_maps_gpt2_names_onto_the_common_sizes()
    {
        var c = (GPT2Config)AutoModel.LoadConfig(TestPaths.Model("gpt2-tiny"));
        Assert.Equal((64, 2, 4, 128, 256), (c.HiddenSize, c.NumHiddenLayers, c.NumAttentionHeads, c.NPositions, c.InnerSize));
        Assert.Equal(1e-5, c.LayerNormEpsilon);
        Assert.Equal("gelu_new", c.ActivationFunction);
    }

    [Theory]
    [InlineData("scale_attn_by_inverse_layer_idx", true)]
    [InlineData("reorder_and_upcast_attn", true)]
    [InlineData("scale_attn_weights", false)]
    public void Unsupported_attention_options_are_rejected_by_name(string field, bool value)
    {
        var raw = (JsonObject)JsonNode.Parse(File.ReadAllText(Path.Combine(TestPaths.Model("gpt2-tiny"), "config.json")))!;
        raw[field] = value;
        var e = Assert.Throws<PeftConfigException>(() => AutoModel.ParseConfig(raw));
        Assert.Contains(field, e.Message);
    }

    /// <summary>openai-community/gpt2 style: keys without "transformer." and the old causal-mask buffers; transformers loads it into GPT2LMHeadModel.</summary>
    [Fact]
    public void Base_checkpoint_without_the_transformer_prefix_loads()
    {
        var src = TestPaths.Model("gpt2-tiny");
        using var folder = new ModifiedModelFolder(src, t => ModifiedModelFolder.StripPrefix(t, "transformer.")
            .Append(new("h.0.attn.bias", ones(1, 1, 128, 128, ScalarType.Bool).tril())));
        using var scope = NewDisposeScope();
        var model = AutoModel.FromPretrained(folder.Dir);
        using var cases = SafetensorsFile.Open(Path.Combine(src, "cases.safetensors"));
        var mask = cases.Load("attention_mask");
        using var _ = no_grad();
        FixtureAssert.Close(model.Forward(cases.Load("input_ids"), mask).Logits, cases.Load("logits"), mask, 1e-4, "gpt2 logits from a base checkpoint");
    }

    [Fact]
    public void Missing_and_unexpected_keys_are_errors_naming_them()
    {
        using var folder = new ModifiedModelFolder(TestPaths.Model("gpt2-tiny"), t => t.Select(kv =>
            kv.Key == "transformer.h.0.ln_1.weight" ? new KeyValuePair<string, Tensor>("transformer.h.0.ln_one.weight", kv.Value) : kv));
        var e = Assert.Throws<PeftFormatException>(() => AutoModel.FromPretrained(folder.Dir));
        Assert.Contains("missing keys: transformer.h.0.ln_1.weight", e.Message);
        Assert.Contains("unexpected keys: transformer.h.0.ln_one.weight", e.Message);
    }

    [Fact]
    public void Bfloat16_forward_is_close_to_float32()
    {
        using var scope = NewDisposeScope();
        var (model, cases) = Load("gpt2-tiny", ScalarType.BFloat16);
        using var _c = cases;
        Assert.Equal(ScalarType.BFloat16, model.DType);
        var mask = cases.Load("attention_mask");
        using var _ = no_grad();
        var logits = model.Forward(cases.Load("input_ids"), mask).Logits;
        Assert.Equal(ScalarType.BFloat16, logits.dtype);
        FixtureAssert.Close(logits, cases.Load("logits"), mask, 0.1, "gpt2 bf16 logits");
    }
}
