using PeftSharp.Models;
using PeftSharp.Tuners;
using PeftSharp.Tuners.Lora;
using static TorchSharp.torch;

namespace PeftSharp.Tests.Tuners.Lora;

public class LoraUnitTests
{
    static PreTrainedModel Llama() => AutoModel.FromPretrained(TestPaths.Model("llama-tiny"));

    static LoraConfig Qv(int r = 8, double alpha = 16, bool rslora = false, bool dora = false) => new()
    {
        R = r, LoraAlpha = alpha, UseRsLora = rslora, UseDora = dora, TargetModules = StringOrList.Of("q_proj", "v_proj"),
    };

    static void RandomizeB(PeftModel peft)
    {
        using var _ = no_grad();
        foreach (var (_, layer) in peft.AdapterLayers())
            if (layer is LoraLinear l) foreach (var a in l.Adapters) l.B(a).normal_(0, 0.05);
    }

    [Fact]
    public void Target_matching_follows_peft_rules()
    {
        const string q = "model.layers.1.self_attn.q_proj";
        Assert.False(TargetMatcher.Matches(new TargetSpec { Targets = StringOrList.Of("q_proj") }, q)); // a string is a full-match regex
        Assert.True(TargetMatcher.Matches(new TargetSpec { Targets = StringOrList.Of(@".*\.q_proj") }, q));
        Assert.True(TargetMatcher.Matches(new TargetSpec { Targets = StringOrList.Of(new[] { "q_proj" }) }, q)); // list: '.'-suffix
        Assert.True(TargetMatcher.Matches(new TargetSpec { Targets = StringOrList.Of(new[] { "self_attn.q_proj" }) }, q));
        Assert.False(TargetMatcher.Matches(new TargetSpec { Targets = StringOrList.Of(new[] { "_proj" }) }, q)); // not a plain suffix
        Assert.False(TargetMatcher.Matches(new TargetSpec { Targets = StringOrList.Of(new[] { "q_proj" }), Exclude = StringOrList.Of(new[] { "layers.1.self_attn.q_proj" }) }, q));
        Assert.False(TargetMatcher.Matches(new TargetSpec { Targets = StringOrList.Of(new[] { "q_proj" }), Exclude = StringOrList.Of(".*layers\\.1\\..*") }, q));
        Assert.True(TargetMatcher.Matches(new TargetSpec { Targets = StringOrList.Of(new[] { "q_proj" }), LayersToTransform = new[] { 1 } }, q));
        Assert.False(TargetMatcher.Matches(new TargetSpec { Targets = StringOrList.Of(new[] { "q_proj" }), LayersToTransform = new[] { 0 } }, q));
        Assert.True(TargetMatcher.Matches(new TargetSpec { Targets = StringOrList.Of(new[] { "q_proj" }), LayersToTransform = new[] { 1 }, LayersPattern = StringOrList.Of("layers") }, q));
        Assert.False(TargetMatcher.Matches(new TargetSpec { Targets = StringOrList.Of(new[] { "q_proj" }), LayersToTransform = new[] { 1 }, LayersPattern = StringOrList.Of("h") }, q));
        Assert.True(TargetMatcher.Matches(new TargetSpec { Targets = StringOrList.Of(new[] { q }), LayersToTransform = new[] { 0 } }, q)); // exact name skips the layer filter
        Assert.False(TargetMatcher.Matches(new TargetSpec { Targets = StringOrList.Of(new[] { "lm_head" }), ModulesToSave = new[] { "lm_head" } }, "lm_head"));
        Assert.Equal("q_proj", TargetMatcher.PatternKey(new[] { "k_proj", "q_proj" }, q));
        Assert.Null(TargetMatcher.PatternKey(new[] { "_proj" }, q));
        Assert.Equal("model.layers.1.self_attn.o_proj", TargetMatcher.PatternKey(new[] { "model.layers.1.self_attn.o_proj" }, "model.layers.1.self_attn.o_proj"));
    }

    [Fact]
    public void All_linear_excludes_the_output_layer_and_no_match_lists_candidates()
    {
        using var scope = NewDisposeScope();
        var model = Llama();
        var all = TargetMatcher.ExpandAllLinear(model, null);
        Assert.Equal(14, all.Count);
        Assert.DoesNotContain("lm_head", all);
        var e = Assert.Throws<PeftConfigException>(() => PeftModel.Create(model, Qv() with { TargetModules = StringOrList.Of(new[] { "query" }) }));
        Assert.Contains("q_proj", e.Message);
        Assert.Contains("down_proj", e.Message);
        Assert.DoesNotContain(model.named_modules(), m => m.module is IAdapterLayer);
    }

    [Fact]
    public void Trainable_parameter_counts_match_hf_and_the_explicit_report()
    {
        using var scope = NewDisposeScope();
        var model = Llama();
        long baseCount = model.ParameterCount();
        var peft = PeftModel.Create(model, Qv());
        // Per layer: q_proj A 8x64 + B 64x8, v_proj A 8x64 + B 32x8; two layers.
        const long trainable = 2 * (8 * 64 + 64 * 8 + 8 * 64 + 32 * 8);
        Assert.Equal((trainable, baseCount + trainable), peft.TrainableParameterCounts());
        Assert.Equal($"trainable params: 3,584 || all params: {baseCount + trainable:N0} || trainable%: {100.0 * trainable / (baseCount + trainable):F4}", peft.PrintTrainableParameters());

        RandomizeB(peft);
        var report = peft.ParameterReport();
        Assert.Equal(trainable, report.AdapterParameters);
        Assert.Equal(4, report.Modules.Count);
        Assert.All(report.Modules, m => Assert.Equal(8, m.DeltaRank));
        Assert.Equal(2 * (64 * 64 + 32 * 64), report.TargetedWeightParameters);
        Assert.True(report.MergedChangedParameters > 0.99 * report.TargetedWeightParameters);
    }

    [Fact]
    public void Rslora_scaling_is_alpha_over_sqrt_r_and_patterns_override()
    {
        using var scope = NewDisposeScope();
        var peft = PeftModel.Create(Llama(), Qv(r: 4, alpha: 8, rslora: true) with
        {
            RankPattern = new[] { new KeyValuePair<string, double>("v_proj", 2) },
            AlphaPattern = new[] { new KeyValuePair<string, double>("model.layers.1.self_attn.q_proj", 32) },
        });
        var layers = peft.AdapterLayers().ToDictionary(l => l.Name, l => (LoraLinear)l.Layer);
        Assert.Equal(8 / Math.Sqrt(4), layers["model.layers.0.self_attn.q_proj"].ScalingOf("default"), 12);
        Assert.Equal(32 / Math.Sqrt(4), layers["model.layers.1.self_attn.q_proj"].ScalingOf("default"), 12);
        Assert.Equal(2, layers["model.layers.0.self_attn.v_proj"].SettingsOf("default").R);
        Assert.Equal(8 / Math.Sqrt(2), layers["model.layers.0.self_attn.v_proj"].ScalingOf("default"), 12);
        Assert.Equal(new long[] { 2, 64 }, layers["model.layers.0.self_attn.v_proj"].A("default").shape);
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void Unmerge_restores_base_weights_and_disable_gives_base_logits(bool dora)
    {
        using var scope = NewDisposeScope();
        using var _ = no_grad();
        var model = Llama();
        var (ids, mask) = LoraFixtureTests.Inputs("llama-tiny");
        var baseLogits = model.Forward(ids, mask).Logits.clone();
        var before = model.state_dict().ToDictionary(kv => kv.Key.Replace("q_proj.", "q_proj.base_layer.").Replace("v_proj.", "v_proj.base_layer."), kv => kv.Value.clone());
        var peft = PeftModel.Create(model, Qv(dora: dora));
        RandomizeB(peft);
        var adapted = peft.Forward(new ModelInputs { InputIds = ids, AttentionMask = mask }).Logits.clone();
        Assert.True(FixtureAssert.MaxAbsDiff(adapted, baseLogits, mask) > 1e-2);

        peft.Merge();
        FixtureAssert.Close(peft.Forward(new ModelInputs { InputIds = ids, AttentionMask = mask }).Logits, adapted, mask, 1e-4, "merged");
        var w = model.state_dict()["model.layers.0.self_attn.q_proj.base_layer.weight"];
        Assert.True(FixtureAssert.MaxAbsDiff(w, before["model.layers.0.self_attn.q_proj.base_layer.weight"]) > 1e-4);
        peft.Unmerge();
        foreach (var (key, value) in model.state_dict())
            if (before.TryGetValue(key, out var b)) FixtureAssert.Close(value, b, null, 1e-6, key);

        peft.Merge();
        using (peft.DisableAdapters())
            FixtureAssert.Close(peft.Forward(new ModelInputs { InputIds = ids, AttentionMask = mask }).Logits, baseLogits, mask, 1e-5, "disabled");
        FixtureAssert.Close(peft.Forward(new ModelInputs { InputIds = ids, AttentionMask = mask }).Logits, adapted, mask, 1e-5, "re-enabled");
    }

    [Fact]
    public void Delete_adapter_removes_its_tensors_and_activates_another()
    {
        using var scope = NewDisposeScope();
        var peft = PeftModel.Create(Llama(), Qv());
        peft.AddAdapter("other", Qv(r: 4) with { TargetModules = StringOrList.Of(new[] { "k_proj", "q_proj" }) });
        Assert.Equal(new[] { "default", "other" }, peft.Adapters);
        Assert.Contains(peft.named_parameters(), p => p.name.Contains(".lora_A.other."));
        Assert.DoesNotContain(peft.named_parameters(), p => p.name.Contains(".other.") && p.parameter.requires_grad);
        peft.DeleteAdapter("default");
        Assert.Equal(new[] { "other" }, peft.Adapters);
        Assert.Equal("other", peft.ActiveAdapter);
        Assert.DoesNotContain(peft.named_parameters(), p => p.name.Contains(".default."));
        Assert.Contains(peft.named_parameters(), p => p.name == "base_model.model.model.layers.0.self_attn.q_proj.lora_A.other.weight");
        Assert.Throws<PeftSharpException>(() => peft.SetAdapter("default"));
    }

    [Fact]
    public void Conv1D_lora_matches_explicit_fan_in_fan_out_math()
    {
        using var scope = NewDisposeScope();
        using var _ = no_grad();
        var conv = new Conv1D(6, 4); // weight [in=4, out=6]
        conv.bias.normal_(0, 0.1);
        var W = conv.weight.clone();
        var bias = conv.bias.clone();
        var layer = new LoraLinear(conv);
        Assert.True(layer.FanInFanOut);
        layer.AddAdapter("default", new LoraAdapterSettings(2, 6, 0, false, false, "true"), trainable: false);
        layer.SetActiveAdapters(new[] { "default" });
        layer.B("default").normal_(0, 0.5);
        var A = layer.A("default"); // [r, in]
        var B = layer.B("default"); // [out, r]
        Assert.Equal(new long[] { 2, 4 }, A.shape);
        Assert.Equal(new long[] { 6, 2 }, B.shape);

        var x = randn(3, 5, 4);
        var expected = x.matmul(W) + bias + x.matmul(A.t()).matmul(B.t()) * 3.0;
        FixtureAssert.Close(layer.call(x), expected, null, 1e-5, "conv1d lora forward");
        FixtureAssert.Close(layer.DeltaWeight("default"), B.matmul(A).t() * 3.0, null, 1e-6, "delta is transposed");

        layer.Merge(new[] { "default" });
        FixtureAssert.Close(conv.weight, W + B.matmul(A).t() * 3.0, null, 1e-6, "merged weight");
        FixtureAssert.Close(layer.call(x), expected, null, 1e-5, "merged forward");
        layer.Unmerge();
        FixtureAssert.Close(conv.weight, W, null, 1e-6, "unmerged weight");
    }

    [Fact]
    public void Mixed_batch_equals_separate_forwards_with_many_adapters()
    {
        using var scope = NewDisposeScope();
        using var _ = no_grad();
        var (ids, mask) = LoraFixtureTests.Inputs("llama-tiny");
        var peft = PeftModel.Create(Llama(), Qv(r: 4));
        peft.AddAdapter("wide", Qv(r: 8) with { TargetModules = StringOrList.Of(new[] { "q_proj", "o_proj", "embed_tokens" }) });
        RandomizeB(peft);
        peft.eval();
        var rows = new[] { "wide", RowAdapters.Base, "default" };
        var mixed = peft.Forward(new ModelInputs { InputIds = ids, AttentionMask = mask }, rows).Logits;
        for (int i = 0; i < rows.Length; i++)
        {
            Tensor single;
            if (rows[i] == RowAdapters.Base)
                using (peft.DisableAdapters()) single = peft.Forward(new ModelInputs { InputIds = ids, AttentionMask = mask }).Logits;
            else
            {
                peft.SetAdapter(rows[i]);
                single = peft.Forward(new ModelInputs { InputIds = ids, AttentionMask = mask }).Logits;
            }
            FixtureAssert.Close(mixed[i], single[i], mask[i], 1e-4, $"row {i} ({rows[i]})");
        }
        Assert.Throws<PeftSharpException>(() => peft.Forward(new ModelInputs { InputIds = ids, AttentionMask = mask }, new[] { "nope", "wide", "default" }));
        peft.Merge();
        Assert.Throws<PeftSharpException>(() => peft.Forward(new ModelInputs { InputIds = ids, AttentionMask = mask }, rows));
    }
}
