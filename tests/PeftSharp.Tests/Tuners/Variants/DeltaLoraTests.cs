using PeftSharp.Models;
using PeftSharp.Tuners;
using PeftSharp.Tuners.DeltaLora;
using PeftSharp.Tuners.Lora;
using static TorchSharp.torch;

namespace PeftSharp.Tests.Tuners.Variants;

public class DeltaLoraTests
{
    static DeltaLoraConfig Config(int start) => new()
    {
        Lora = new LoraConfig { R = 4, LoraAlpha = 8, TargetModules = StringOrList.Of("q_proj", "v_proj") },
        UpdateRatio = 2, StartSteps = start,
    };

    [Fact]
    public void Per_step_W_updates_telescope_and_the_saved_adapter_reproduces_the_trained_model()
    {
        using var scope = NewDisposeScope();
        manual_seed(11);
        var peft = PeftModel.Create(VariantTestModels.LlamaTiny(), Config(start: 2));
        var layers = peft.AdapterLayers().Select(l => (DeltaLoraLinear)l.Layer).ToList();
        var w0 = layers.Select(l => l.BaseWeight.detach().clone()).ToList();
        var explicitW = w0.Select(w => w.clone()).ToList();
        Tensor[] Products() => layers.Select(l => l.B("default").matmul(l.A("default")).detach().clone()).ToArray();

        var ids = VariantTestModels.Batch(2, 8, 3);
        var trainable = peft.parameters().Where(p => p.requires_grad).ToList();
        Assert.Equal(layers.Count * 2, trainable.Count);
        using var opt = optim.AdamW(trainable, lr: 0.01);
        using var updater = new DeltaLoraUpdater(peft);
        Tensor[]? atStart = null;
        const int steps = 6, start = 2;
        double s = 8.0 / 4, ratio = 2;
        for (int t = 0; t < steps; t++)
        {
            using var st = NewDisposeScope();
            var before = Products();
            if (t == start) atStart = before.Select(p => p.clone().DetachFromDisposeScope()).ToArray();
            opt.zero_grad();
            VariantTestModels.CausalLoss(peft.Model, ids).backward();
            opt.step();
            updater.OnStepEnd(t);
            var after = Products();
            // The explicit algorithm: W += λ·s·(B_{t+1}A_{t+1} − B_tA_t) for every step t ≥ K.
            if (t >= start)
                for (int i = 0; i < layers.Count; i++) explicitW[i].add_((after[i] - before[i]) * (ratio * s));
        }
        var final = Products();
        for (int i = 0; i < layers.Count; i++)
        {
            Assert.Null(layers[i].BaseWeight.grad);
            Assert.False(layers[i].BaseWeight.requires_grad);
            FixtureAssert.Close(layers[i].BaseWeight, explicitW[i], null, 1e-6, "W vs the explicit per-step loop");
            // Telescoping: W_T = W_0 + λ·s·(B_T·A_T − B_K·A_K).
            FixtureAssert.Close(explicitW[i], w0[i] + (final[i] - atStart![i]) * (ratio * s), null, 1e-6, "telescoped W");
            Assert.True((layers[i].BaseWeight - w0[i]).abs().max().item<float>() > 1e-4, "W was updated");
        }

        peft.eval();
        using var _ = no_grad();
        var inputs = new ModelInputs { InputIds = ids };
        var trained = peft.Forward(inputs).Logits;
        var dir = TestPaths.TempDir();
        peft.SaveAdapter(dir);
        Assert.IsType<DeltaLoraConfig>(PeftMethods.LoadConfig(dir));

        var reloaded = PeftModel.FromPretrained(VariantTestModels.LlamaTiny(), dir);
        FixtureAssert.Close(reloaded.Forward(inputs).Logits, trained, null, 1e-5, "reloaded on the original base");
        // Mixed batch: rows on the adapter, on the base and on a second copy of the adapter.
        reloaded.LoadAdapter(dir, "second");
        Tensor baseLogits;
        using (reloaded.DisableAdapters()) baseLogits = reloaded.Forward(inputs).Logits;
        var mixed = reloaded.Forward(inputs, new[] { "default", RowAdapters.Base }).Logits;
        FixtureAssert.Close(mixed[0], trained[0], null, 1e-5, "mixed row 0");
        FixtureAssert.Close(mixed[1], baseLogits[1], null, 1e-5, "mixed row 1 (base)");
        var merged = reloaded.MergeAndUnload();
        FixtureAssert.Close(merged.Forward(inputs).Logits, trained, null, 1e-5, "reloaded and merged");
        peft.Merge();
        FixtureAssert.Close(peft.Forward(inputs).Logits, trained, null, 1e-5, "merged in the training process");
    }

    [Fact]
    public void Before_start_steps_the_base_weight_is_untouched_and_the_adapter_is_plain_LoRA()
    {
        using var scope = NewDisposeScope();
        var peft = PeftModel.Create(VariantTestModels.LlamaTiny(), Config(start: 500));
        var layer = (DeltaLoraLinear)peft.AdapterLayers().First().Layer;
        var w0 = layer.BaseWeight.detach().clone();
        var ids = VariantTestModels.Batch(2, 8, 4);
        using var opt = optim.AdamW(peft.parameters().Where(p => p.requires_grad), lr: 0.01);
        using var updater = new DeltaLoraUpdater(peft);
        for (int t = 0; t < 3; t++)
        {
            using var st = NewDisposeScope();
            opt.zero_grad();
            VariantTestModels.CausalLoss(peft.Model, ids).backward();
            opt.step();
            updater.OnStepEnd(t);
        }
        Assert.True(layer.BaseWeight.equal(w0).all().item<bool>());
        var (a0, b0) = layer.StartSnapshot("default");
        Assert.True(a0.equal(layer.A("default")).all().item<bool>() && b0.equal(layer.B("default")).all().item<bool>());
        var report = peft.ParameterReport();
        Assert.All(report.Modules, m => Assert.True(m.DeltaRank <= 4));
    }

    [Fact]
    public void Dropout_is_forced_to_zero()
    {
        var peft = PeftModel.Create(VariantTestModels.LlamaTiny(), Config(0) with { Lora = Config(0).Lora with { LoraDropout = 0.1 } });
        Assert.Equal(0, ((DeltaLoraConfig)peft.ActiveConfig).Lora.LoraDropout);
    }
}

public class DeltaLoraTrainerTests
{
    [Fact]
    public void Trainer_calls_the_step_hook_and_the_saved_adapter_reproduces_the_trained_model()
    {
        using var scope = NewDisposeScope();
        var peft = PeftModel.Create(VariantTestModels.LlamaTiny(), new DeltaLoraConfig
        {
            Lora = new LoraConfig { R = 4, LoraAlpha = 8, TargetModules = StringOrList.Of("q_proj", "v_proj") }, StartSteps = 1,
        });
        var layer = (DeltaLoraLinear)peft.AdapterLayers().First().Layer;
        var w0 = layer.BaseWeight.detach().clone();
        var rows = VariantLearningTests.CountingBatch(4, 10, 7);
        var examples = Enumerable.Range(0, 4).Select(i =>
        {
            var ids = rows[i].data<long>().Select(v => (int)v).ToArray();
            return new PeftSharp.Training.Data.TrainExample { InputIds = ids, AttentionMask = ids.Select(_ => 1).ToArray(), Labels = ids };
        }).ToList();
        var args = new PeftSharp.Training.TrainingArguments { OutputDir = TestPaths.TempDir(), LearningRate = 1e-2, MaxSteps = 4, PerDeviceTrainBatchSize = 4, Shuffle = false };
        using var trainer = new PeftSharp.Training.Trainer(PeftSharp.Training.AdapterTargets.Peft(peft), args, examples);
        using var updater = new DeltaLoraUpdater(peft);
        trainer.Callbacks.Add(updater);
        trainer.Train();
        Assert.True((layer.BaseWeight - w0).abs().max().item<float>() > 1e-5, "the trainer ran the W update");

        peft.eval();
        using var _ = no_grad();
        var inputs = new ModelInputs { InputIds = rows };
        var dir = TestPaths.TempDir();
        peft.SaveAdapter(dir);
        var reloaded = PeftModel.FromPretrained(VariantTestModels.LlamaTiny(), dir);
        FixtureAssert.Close(reloaded.Forward(inputs).Logits, peft.Forward(inputs).Logits, null, 1e-5, "reloaded");
    }
}
