using PeftSharp.Inference.Serving;
using PeftSharp.Models;
using PeftSharp.Tests.Tuners.Lora;
using PeftSharp.Tuners;
using PeftSharp.Tuners.Lora;
using static TorchSharp.torch;

namespace PeftSharp.Tests.Tuners;

/// <summary>
/// One container over the base for adapters of different methods whose rows mix (LoRA + IA³: what serving holds), and
/// the refusal of two module-replacing methods on one module, which used to leave the second adapter silently unapplied.
/// </summary>
public class MixedContainerTests
{
    static string Ia3Dir => TestPaths.Data("adapters", "llama-tiny", "ia3");      // k_proj, v_proj, down_proj
    static string LoraQvDir => TestPaths.Data("adapters", "llama-tiny", "lora_qv"); // q_proj, v_proj: overlaps IA³ on v_proj

    static PreTrainedModel Base() => AutoModel.FromPretrained(TestPaths.Model("llama-tiny"));

    /// <summary>A LoRA adapter on q_proj and o_proj (no module in common with the IA³ fixture), with non-zero B.</summary>
    static string LoraOnQO()
    {
        var dir = TestPaths.TempDir();
        using var scope = NewDisposeScope();
        using var model = Base();
        manual_seed(1);
        var peft = PeftModel.Create(model, new LoraConfig { R = 4, LoraAlpha = 8, TargetModules = StringOrList.Of("q_proj", "o_proj") });
        using (no_grad())
            foreach (var (_, p) in peft.named_parameters().Where(p => p.name.Contains("lora_B"))) p.normal_(0, 0.05);
        peft.SaveAdapter(dir);
        return dir;
    }

    [Fact]
    public void Lora_and_ia3_adapters_share_one_model_and_each_row_gets_what_it_gets_alone()
    {
        using var scope = NewDisposeScope();
        using var _ = no_grad();
        var loraDir = LoraOnQO();
        var (ids, mask) = LoraFixtureTests.Inputs("llama-tiny");
        var inputs = new ModelInputs { InputIds = ids, AttentionMask = mask };
        Tensor Alone(string dir) => PeftModel.FromPretrained(Base(), dir).Forward(inputs).Logits;
        var lora = Alone(loraDir);
        var ia3 = Alone(Ia3Dir);
        var baseLogits = Base().Forward(inputs).Logits;

        var peft = PeftModel.LoadWithAdapters(Base(), new[] { ("l", loraDir), ("i", Ia3Dir) });
        var mixed = peft.Forward(inputs, new[] { "i", RowAdapters.Base, "l" }).Logits;
        FixtureAssert.Close(mixed[0], ia3[0], mask[0], 1e-5, "row 0 (IA3)");
        FixtureAssert.Close(mixed[1], baseLogits[1], mask[1], 1e-5, "row 1 (base)");
        FixtureAssert.Close(mixed[2], lora[2], mask[2], 1e-5, "row 2 (LoRA)");
        peft.SetAdapter("i");
        FixtureAssert.Close(peft.Forward(inputs).Logits, ia3, mask, 1e-5, "IA3 active alone");
        Assert.True((lora - ia3).abs().max().item<float>() > 1e-3, "the two adapters differ");
    }

    [Fact]
    public void A_second_method_on_an_adapted_module_is_refused_naming_both_adapters_and_the_module()
    {
        using var scope = NewDisposeScope();
        using var model = Base();
        var peft = PeftModel.Create(model, new LoraConfig { R = 4, TargetModules = StringOrList.Of("v_proj", "o_proj") }, "lora_a");
        var e = Assert.Throws<PeftConfigException>(() => peft.LoadAdapter(Ia3Dir, "ia3_b"));
        Assert.Contains("adapter 'ia3_b' (IA3)", e.Message);
        Assert.Contains("'lora_a'", e.Message);
        Assert.Contains("model.layers.0.self_attn.v_proj", e.Message);
        Assert.DoesNotContain(peft.AdapterLayers(), l => l.Layer.Adapters.Contains("ia3_b"));
        Assert.Equal(new[] { "lora_a" }, peft.Adapters);

        // A second PeftModel over the same base is refused the same way.
        var e2 = Assert.Throws<PeftConfigException>(() => PeftModel.FromPretrained(model, Ia3Dir, "ia3_c"));
        Assert.Contains("adapter 'ia3_c' (IA3)", e2.Message);
        Assert.Contains("'lora_a'", e2.Message);
    }

    [Fact]
    public void Serving_batches_lora_and_ia3_in_one_container_and_refuses_an_overlapping_adapter()
    {
        using var scope = NewDisposeScope();
        using var model = Base();
        var registry = new AdapterRegistry(model, 4);
        registry.Register("l", AdapterRegistry.Prepare(LoraOnQO()));
        registry.Register("i", AdapterRegistry.Prepare(Ia3Dir));
        Assert.True(registry.IsBatched("l") && registry.IsBatched("i"), "both methods share the mixed batch");
        Assert.Equal(new[] { "l", "i" }, registry.Peft!.Adapters);

        var e = Assert.Throws<PeftConfigException>(() => registry.Register("qv", AdapterRegistry.Prepare(LoraQvDir)));
        Assert.Contains("adapter 'qv' (LORA)", e.Message);
        Assert.Contains("'i'", e.Message);
        Assert.Contains("v_proj", e.Message);
        Assert.False(registry.Contains("qv"));
        Assert.Equal(new[] { "l", "i" }, registry.Peft!.Adapters);
    }
}
