using PeftSharp.Models;
using PeftSharp.Tuners.AdapterHub;
using PeftSharp.Tuners.Bottleneck;
using static TorchSharp.torch;

namespace PeftSharp.Tests.Tuners.AdapterHub;

/// <summary>AdapterHub's Parallel and Average composition blocks over bottleneck adapters.</summary>
public class AdapterHubCompositionTests
{
    [Theory]
    [InlineData("bert-tiny-cls")]
    [InlineData("llama-tiny")]
    public void Parallel_output_for_each_adapter_equals_that_adapter_alone(string baseModel)
    {
        using var scope = NewDisposeScope();
        using var _ = no_grad();
        var dir = AdapterHubFixtureTests.Case(baseModel, "stack");
        var peft = AdapterHubFixtureTests.Load(baseModel, Path.Combine(dir, "a"), "a");
        peft.LoadAdapter(Path.Combine(dir, "b"), "b");
        var inputs = AdapterHubFixtureTests.Inputs(baseModel);
        Tensor Run(Composition c) { HubAdapters.Activate(peft, c); return peft.Forward(inputs).Logits; }
        var a = Run("a");
        var b = Run("b");
        var both = Run(Composition.Parallel("a", "b"));
        long n = a.shape[0];
        Assert.Equal(2 * n, both.shape[0]);
        FixtureAssert.Close(both.narrow(0, 0, n), a, null, 1e-5, "Parallel copy 0 vs a");
        FixtureAssert.Close(both.narrow(0, n, n), b, null, 1e-5, "Parallel copy 1 vs b");
        Assert.True(FixtureAssert.MaxAbsDiff(a, b) > 1e-3);
    }

    [Fact]
    public void Parallel_replicates_at_the_first_adapter_layer_so_dropped_layers_run_once()
    {
        using var scope = NewDisposeScope();
        using var _ = no_grad();
        var dir = AdapterHubFixtureTests.Case("llama-tiny", "stack");
        var peft = AdapterHubFixtureTests.Load("llama-tiny", Path.Combine(dir, "a"), "a");
        peft.LoadAdapter(Path.Combine(dir, "b"), "b");
        var inputs = AdapterHubFixtureTests.Inputs("llama-tiny");
        long rows = 0;
        // The fixture adapters sit after each block's FFN (output_adapter): block 1's attention comes after block 0's slot.
        var q1 = (nn.Module<Tensor, Tensor>)ModuleSurgery.Get(peft.Model, "model.layers.1.self_attn.q_proj");
        q1.register_forward_pre_hook((_, x) => { rows = x.shape[0]; return x; });
        Tensor Run(Composition c) { HubAdapters.Activate(peft, c); return peft.Forward(inputs).Logits; }
        long n = Run("a").shape[0];
        Run(Composition.Parallel("a", "b"));
        Assert.Equal(2 * n, rows);
        HubAdapters.DropLayers(peft, new[] { 0 });
        var a = Run("a");
        var b = Run("b");
        var both = Run(Composition.Parallel("a", "b"));
        Assert.Equal(n, rows); // block 0's adapters dropped: the copies start at block 1's slot
        FixtureAssert.Close(both.narrow(0, 0, n), a, null, 1e-5, "Parallel copy 0 vs a (block 0 dropped)");
        FixtureAssert.Close(both.narrow(0, n, n), b, null, 1e-5, "Parallel copy 1 vs b (block 0 dropped)");
    }

    [Fact]
    public void Parallel_refuses_generation_and_non_bottleneck_adapters()
    {
        using var scope = NewDisposeScope();
        var dir = AdapterHubFixtureTests.Case("llama-tiny", "stack");
        var peft = AdapterHubFixtureTests.Load("llama-tiny", Path.Combine(dir, "a"), "a");
        peft.LoadAdapter(Path.Combine(dir, "b"), "b");
        peft.LoadAdapter(AdapterHubFixtureTests.Case("llama-tiny", "lora"), "lora");
        var e = Assert.Throws<PeftSharpException>(() => HubAdapters.Activate(peft, Composition.Parallel("a", "lora")));
        Assert.Contains("'lora' is lora", e.Message);
        HubAdapters.Activate(peft, Composition.Parallel("a", "b"));
        using var cache = peft.NewCache();
        e = Assert.Throws<PeftSharpException>(() => peft.Forward(new ModelInputs { InputIds = tensor(new long[] { 1, 5, 7 }).view(1, 3), Cache = cache }));
        Assert.Contains("generate with one adapter", e.Message);
    }

    [Fact]
    public void Nesting_follows_adapterhub_rules()
    {
        Assert.Equal(2, Composition.Stack(Composition.Single("x"), Composition.Parallel("a", "b")).ParallelChannels);
        Assert.Throws<PeftSharpException>(() => Composition.Parallel(Composition.Parallel("a", "b"), Composition.Single("c")));
        Assert.Throws<PeftSharpException>(() => Composition.Average(new[] { Composition.Fuse("a", "b"), Composition.Single("c") }));
        Assert.Throws<PeftSharpException>(() => Composition.Average(new Composition[] { "a", "b" }, new[] { 1.0 }));
        Assert.Equal(new[] { 0.25, 0.75 }, Composition.Average(new Composition[] { "a", "b" }, new[] { 1.0, 3.0 }).Weights);
        Assert.Equal(new[] { 0.5, 0.5 }, Composition.Average("a", "b").Weights);
    }

    static AdapterSlot Slot(long hidden)
    {
        manual_seed(7);
        var slot = new AdapterSlot(new BlockSlot(SlotLocation.Output, 0));
        slot.Add("a", new BottleneckAdapter(BottleneckConfig.SeqBn() with { ReductionFactor = 4 }, hidden));
        slot.Add("b", new BottleneckAdapter(BottleneckConfig.SeqBn() with { ReductionFactor = 2, NonLinearity = "gelu" }, hidden));
        slot.eval();
        return slot;
    }

    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public void Average_equals_the_weighted_mean_of_single_adapter_outputs_pre_norm(bool normalize)
    {
        using var scope = NewDisposeScope();
        using var _ = no_grad();
        var slot = Slot(16);
        var h = randn(2, 3, 16);
        var x = randn(2, 3, 16);
        Tensor Out(Composition c) { slot.Setup = c; return slot.Apply(h, x, null); }
        // Pre-norm (Llama): a single adapter's slot output is x + o_i; AdapterHub averages the o_i as mean_i(w_i * o_i).
        var oa = Out("a") - x;
        var ob = Out("b") - x;
        var avg = Out(Composition.Average(new Composition[] { "a", "b" }, new[] { 1.0, 3.0 }, normalize));
        var (wa, wb) = normalize ? (0.25, 0.75) : (1.0, 3.0);
        FixtureAssert.Close(avg, x + (oa * wa + ob * wb) / 2, null, 1e-6, "Average");
        Assert.True(FixtureAssert.MaxAbsDiff(oa, ob) > 1e-3);
    }

    [Fact]
    public void Average_applies_the_sublayer_norm_after_the_mean_post_norm()
    {
        using var scope = NewDisposeScope();
        using var _ = no_grad();
        var slot = Slot(16);
        var ln = nn.LayerNorm(16);
        using (no_grad()) { ln.weight!.normal_(1, 0.1); ln.bias!.normal_(0, 0.1); }
        var h = randn(2, 3, 16);
        var x = randn(2, 3, 16);
        // BERT: z = LN(h + x), o_i = A_i(z) + h, y = LN(mean_i(w_i * o_i) + x).
        var z = ln.call(h + x);
        Tensor O(string n) => slot[n].Forward(z, h).Output;
        slot.Setup = Composition.Average("a", "b");
        FixtureAssert.Close(slot.Apply(h, x, ln), ln.call((O("a") * 0.5 + O("b") * 0.5) / 2 + x), null, 1e-6, "Average with LayerNorm");
    }
}
