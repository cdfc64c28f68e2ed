using PeftSharp.Models;
using PeftSharp.Tuners;
using PeftSharp.Tuners.BitFit;
using TorchSharp;
using static PeftSharp.Tests.Tuners.AdapterHub.AdapterHubFixtureTests;
using static TorchSharp.torch;

namespace PeftSharp.Tests.Tuners.BitFit;

// Seeds and trains through the global torch RNG: run outside the parallel phase so concurrent trainer tests stay deterministic.
[Collection(nameof(PeftSharp.Tests.Runtime.MemoryCollection))]
public class BitFitTests
{
    static double Train(PeftModel peft, ModelInputs inputs, Func<Tensor, Tensor> loss, int steps = 15)
    {
        var opt = optim.AdamW(peft.Model.parameters().Where(p => p.requires_grad), lr: 2e-2);
        double first = 0, last = 0;
        for (int i = 0; i < steps; i++)
        {
            using var s = NewDisposeScope();
            opt.zero_grad();
            var l = loss(peft.Forward(inputs).Logits);
            l.backward();
            opt.step();
            if (i == 0) first = l.item<float>();
            last = l.item<float>();
        }
        return last / first;
    }

    [Fact]
    public void Bert_trains_every_bias_and_the_head_only_and_round_trips()
    {
        using var scope = NewDisposeScope();
        var model = AutoModel.FromPretrained(TestPaths.Model("bert-tiny-cls"));
        long biasElements = model.named_parameters().Where(p => p.name.EndsWith(".bias") && !p.name.StartsWith("classifier")).Sum(p => p.parameter.numel());
        long headElements = model.named_parameters().Where(p => p.name.StartsWith("classifier")).Sum(p => p.parameter.numel());
        var peft = PeftModel.Create(model, new BitFitConfig());
        var (trainable, _) = peft.TrainableParameterCounts();
        Assert.Equal(biasElements + headElements, trainable);
        Assert.Contains(peft.AdapterLayers(), l => l.Name.EndsWith("attention.output.LayerNorm"));

        var inputs = Inputs("bert-tiny-cls");
        var labels = tensor(new long[] { 0, 1, 2 });
        Assert.True(Train(peft, inputs, logits => nn.functional.cross_entropy(logits, labels)) < 0.5);

        var dir = TestPaths.TempDir();
        peft.SaveAdapter(dir);
        using var _ = no_grad();
        peft.eval();
        var want = peft.Forward(inputs).Logits;
        var loaded = PeftModel.FromPretrained(AutoModel.FromPretrained(TestPaths.Model("bert-tiny-cls")), dir);
        FixtureAssert.Close(loaded.Forward(inputs).Logits, want, null, 1e-5, "reloaded BitFit");
        // biases merge into the base model exactly
        FixtureAssert.Close(loaded.MergeAndUnload().Forward(inputs).Logits, want, null, 1e-5, "merged BitFit");
    }

    [Fact]
    public void Llama_gets_zero_initialized_biases_on_its_projections()
    {
        using var scope = NewDisposeScope();
        var inputs = Inputs("llama-tiny");
        var model = AutoModel.FromPretrained(TestPaths.Model("llama-tiny"));
        Tensor baseLogits;
        using (no_grad()) baseLogits = model.Forward(inputs).Logits;
        var peft = PeftModel.Create(model, new BitFitConfig());
        var config = (BitFitConfig)peft.ActiveConfig;
        Assert.Equal(new[] { "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj" }.OrderBy(x => x), config.TargetModules!.Items!.OrderBy(x => x));
        using (no_grad()) FixtureAssert.Close(peft.Forward(inputs).Logits, baseLogits, inputs.AttentionMask, 0, "zero biases change nothing");
        var ids = inputs.InputIds!;
        Assert.True(Train(peft, inputs, l => nn.functional.cross_entropy(l[.., ..^1].reshape(-1, l.shape[2]), ids[.., 1..].reshape(-1))) < 0.8);
        var state = peft.AdapterStateDict("default");
        Assert.Contains("base_model.model.model.layers.0.self_attn.q_proj.bias", state.Keys);
        Assert.Contains("merged", Assert.Throws<PeftSharpException>(() => peft.Merge()).Message);
    }
}
