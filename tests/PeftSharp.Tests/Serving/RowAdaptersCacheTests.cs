using PeftSharp.Models;
using PeftSharp.Tuners;
using TorchSharp;
using static PeftSharp.Tests.Serving.ServingTestHost;
using static TorchSharp.torch;

namespace PeftSharp.Tests.Serving;

/// <summary>A RowAdapters kept across forwards (the serving decode loop) reuses, selects and joins the per-row A/B its layers gathered.</summary>
public class RowAdaptersCacheTests
{
    [Fact]
    public void KeptSelectedAndConcatenatedRowsGiveTheLogitsOfAFreshMixedForward()
    {
        using var model = AutoModel.FromPretrained(TestPaths.Model("llama-tiny"));
        var peft = PeftModel.LoadWithAdapters(model, new[] { ("a", Multi("a")), ("b", Multi("b")), ("c", Multi("c")) });
        peft.eval();
        using var noGrad = no_grad();
        var names = new[] { "a", "b", RowAdapters.Base, "c" };
        var ids = torch.randint(3, 300, new long[] { 4, 5 }, generator: new torch.Generator(7));
        Tensor Logits(Tensor rows, RowAdapters adapters) => peft.Forward(new ModelInputs { InputIds = ids.index_select(0, rows) }, adapters).Logits;
        static Tensor Rows(params long[] r) => tensor(r);

        var fresh = peft.Forward(new ModelInputs { InputIds = ids }, names).Logits;
        using var first = new RowAdapters(names[..2], model.Device);
        using var second = new RowAdapters(names[2..], model.Device);
        Logits(Rows(0, 1), first);
        Logits(Rows(2, 3), second);
        using var joined = first.Concat(second);
        Assert.Equal(names, joined.PerRow);
        Assert.True(Logits(Rows(0, 1, 2, 3), joined).allclose(fresh, rtol: 1e-5, atol: 1e-5));
        Assert.True(Logits(Rows(0, 1, 2, 3), joined).allclose(fresh, rtol: 1e-5, atol: 1e-5));

        using var kept = joined.Select(new long[] { 3, 0 });
        Assert.Equal(new[] { "c", "a" }, kept.PerRow);
        Assert.True(Logits(Rows(3, 0), kept).allclose(fresh.index_select(0, Rows(3, 0)), rtol: 1e-5, atol: 1e-5));
        // Rows a layer cannot have cached the same way (the base row alone has nothing gathered) are rebuilt, not mixed up.
        using var baseOnly = new RowAdapters(new[] { RowAdapters.Base }, model.Device);
        Logits(Rows(2), baseOnly);
        using var mixed = kept.Concat(baseOnly);
        Assert.True(Logits(Rows(3, 0, 2), mixed).allclose(fresh.index_select(0, Rows(3, 0, 2)), rtol: 1e-5, atol: 1e-5));
    }

    [Fact]
    public void Past_its_byte_budget_a_kept_instance_rebuilds_instead_of_holding_more()
    {
        using var model = AutoModel.FromPretrained(TestPaths.Model("llama-tiny"));
        var peft = PeftModel.LoadWithAdapters(model, new[] { ("a", Multi("a")), ("b", Multi("b")) });
        peft.eval();
        using var noGrad = no_grad();
        var names = new[] { "b", "a" };
        var ids = torch.randint(3, 300, new long[] { 2, 5 }, generator: new torch.Generator(3));
        var fresh = peft.Forward(new ModelInputs { InputIds = ids }, names).Logits;
        using var budgeted = new RowAdapters(names, model.Device) { MaxCachedBytes = 0 };
        int builds = 0;
        Assert.Single(budgeted.Cached("probe", () => { builds++; return new[] { zeros(2, 3) }; }));
        budgeted.Cached("probe", () => { builds++; return new[] { zeros(2, 3) }; });
        Assert.Equal(2, builds); // nothing kept: built again
        for (int i = 0; i < 2; i++)
            Assert.True(peft.Forward(new ModelInputs { InputIds = ids }, budgeted).Logits.allclose(fresh, rtol: 1e-5, atol: 1e-5));
        using var selected = budgeted.Select(new long[] { 1 });
        Assert.Equal(0, selected.MaxCachedBytes);
    }
}
