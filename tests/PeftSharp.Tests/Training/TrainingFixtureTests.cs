using System.Text.Json.Nodes;
using PeftSharp.IO;
using PeftSharp.Models;
using PeftSharp.Training;
using PeftSharp.Training.Data;
using PeftSharp.Tuners;
using TorchSharp;
using static TorchSharp.torch;

namespace PeftSharp.Tests.Training;

/// <summary>
/// training/llama-tiny-lora: 8 steps of HF Trainer-style AdamW on llama-tiny + a LoRA (q,k,v,o, r=8) from transformers
/// 4.57.6 + peft — per-step loss, grad norm and lr (rtol 1e-4), the step-0 gradients and the final adapter (atol 1e-5).
/// </summary>
public class TrainingFixtureTests
{
    static string Root => TestPaths.Data("training", "llama-tiny-lora");

    internal static List<TrainExample> Batch()
    {
        using var f = SafetensorsFile.Open(Path.Combine(Root, "batch.safetensors"));
        using var ids = f.Load("input_ids"); using var mask = f.Load("attention_mask"); using var labels = f.Load("labels");
        int rows = (int)ids.shape[0];
        int[] Row(Tensor t, int i) { using var r = t[i]; return r.data<long>().Select(v => (int)v).ToArray(); }
        return Enumerable.Range(0, rows).Select(i => new TrainExample { InputIds = Row(ids, i), AttentionMask = Row(mask, i), Labels = Row(labels, i) }).ToList();
    }

    [Theory]
    [InlineData("adamw", 4, 1, null)]
    [InlineData("adamw_grad_accum2", 2, 2, null)]
    [InlineData("loraplus", 4, 1, 16.0)]
    public void Trainer_reproduces_the_reference_run(string variant, int batchSize, int accumulation, double? loraPlusRatio)
    {
        var expected = JsonNode.Parse(File.ReadAllText(Path.Combine(Root, variant, "trajectory.json")))!;
        using var model = AutoModel.FromPretrained(TestPaths.Model("llama-tiny"));
        var peft = PeftModel.FromPretrained(model, Path.Combine(Root, "initial"), isTrainable: true);
        var args = new TrainingArguments
        {
            OutputDir = TestPaths.TempDir(), LearningRate = 1e-3, WeightDecay = 0.01, WarmupSteps = 2, MaxSteps = 8, MaxGradNorm = 1.0,
            LrSchedulerType = "linear", PerDeviceTrainBatchSize = batchSize, GradientAccumulationSteps = accumulation,
            Shuffle = false, LoggingSteps = 1, LoraPlusLrRatio = loraPlusRatio,
        };
        var steps = new List<StepRecord>();
        var grads0 = new Dictionary<string, Tensor>();
        using var trainer = new Trainer(AdapterTargets.Peft(peft), args, Batch());
        trainer.StepCompleted += steps.Add;
        trainer.GradientsComputed += step =>
        {
            if (step != 1) return;
            foreach (var (name, p) in peft.named_parameters().Where(p => p.parameter.requires_grad))
                grads0[name.Replace(".default", "")] = p.grad!.detach().clone().DetachFromDisposeScope();
        };
        trainer.Train();

        double[] Values(string key) => expected[key]!.AsArray().Select(v => v!.GetValue<double>()).ToArray();
        var loss = Values("loss"); var norm = Values("grad_norm"); var lr = Values("lr");
        Assert.Equal(8, steps.Count);
        for (int k = 0; k < 8; k++)
        {
            AssertRel(loss[k], steps[k].Loss, $"loss at step {k}");
            AssertRel(norm[k], steps[k].GradNorm, $"grad_norm at step {k}");
            Assert.Equal(lr[k], steps[k].LearningRate, 12);
            var groupLrs = expected["lr_per_group"]![k]!.AsArray().Select(v => v!.GetValue<double>()).ToArray();
            Assert.Equal(groupLrs.Length, steps[k].GroupLearningRates.Count);
            for (int g = 0; g < groupLrs.Length; g++) Assert.Equal(groupLrs[g], steps[k].GroupLearningRates[g], 12);
        }

        using (var g = SafetensorsFile.Open(Path.Combine(Root, variant, "grads_step0.safetensors")))
        {
            Assert.Equal(g.Keys.OrderBy(k => k), grads0.Keys.OrderBy(k => k));
            foreach (var key in g.Keys)
                FixtureAssert.Close(grads0[key], g.Load(key), atol: 1e-5, what: $"step-0 gradient {key}");
        }
        using var want = SafetensorsFile.Open(Path.Combine(Root, variant, "adapter_model.safetensors"));
        using var got = SafetensorsFile.Open(Path.Combine(args.OutputDir, "adapter_model.safetensors"));
        Assert.Equal(want.Keys.OrderBy(k => k), got.Keys.OrderBy(k => k));
        foreach (var key in want.Keys)
            FixtureAssert.Close(got.Load(key), want.Load(key), atol: 1e-5, what: $"final adapter {key}");
    }

    static void AssertRel(double expected, double actual, string what) =>
        Assert.True(Math.Abs(actual - expected) <= 1e-4 * Math.Abs(expected), $"{what}: {actual} vs {expected}");
}
