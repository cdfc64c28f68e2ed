using PeftSharp.IO;
using PeftSharp.Models;
using PeftSharp.Tuners;
using PeftSharp.Tuners.Lora;
using PeftSharp.Tuners.LoraFa;
using static TorchSharp.torch;

namespace PeftSharp.Tests.Tuners.Variants;

/// <summary>fixtures training/llama-tiny-lora/lorafa: peft's create_lorafa_optimizer trajectory (8 steps).</summary>
public class LoraFaTests
{
    static string Dir(params string[] parts) => TestPaths.Data(new[] { "training", "llama-tiny-lora" }.Concat(parts).ToArray());

    // meta.json: lr 1e-3, wd 0.01, warmup 2 of 8 linear, max_grad_norm 1.0, loss = mean CE over non -100 shifted labels.
    static readonly double[] Lrs = { 0.0, 0.0005, 0.001, 0.0008333333333333334, 0.0006666666666666666, 0.0005, 0.0003333333333333333, 0.00016666666666666666 };
    // meta.json lorafa_fp32_projection_probe: the same run with the projection in float32 (what PeftSharp computes).
    static readonly double[] Fp32Losses = { 6.171204566955566, 6.171204566955566, 6.148591995239258, 6.103455543518066, 6.06602144241333, 6.036229610443115, 6.013978004455566, 5.999185562133789 };

    static Tensor HfCausalLoss(PreTrainedModel model, Tensor ids, Tensor mask, Tensor labels)
    {
        var logits = model.Forward(new ModelInputs { InputIds = ids, AttentionMask = mask }).Logits;
        long v = logits.shape[2];
        return nn.functional.cross_entropy(logits.narrow(1, 0, logits.shape[1] - 1).reshape(-1, v), labels.narrow(1, 1, labels.shape[1] - 1).reshape(-1), ignore_index: -100);
    }

    static void ClipGradNorm(IEnumerable<Tensor> ps, double max)
    {
        var grads = ps.Where(p => p.grad is not null).Select(p => p.grad!).ToList();
        var norm = stack(grads.Select(g => linalg.norm(g)).ToArray()).norm().item<float>();
        double coef = max / (norm + 1e-6);
        if (coef < 1) using (no_grad()) foreach (var g in grads) g.mul_(coef);
    }

    // trajectory.json: peft's run, with the projection under CPU bf16 autocast.
    static readonly double[] Bf16Losses = { 6.171204566955566, 6.171204566955566, 6.148595333099365, 6.103461265563965, 6.066033840179443, 6.036243915557861, 6.013994216918945, 5.999201774597168 };

    // Row 3 of the batch is left-padded: HF's SDPA gives fully masked pad queries a zero output, which the model matches
    // with the boolean SDPA mask.
    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public void Optimizer_reproduces_peft_lorafa_trajectory(bool bf16Projection)
    {
        using var scope = NewDisposeScope();
        using var batch = SafetensorsFile.Open(Dir("batch.safetensors"));
        var (ids, mask, labels) = (batch.Load("input_ids"), batch.Load("attention_mask"), batch.Load("labels"));
        var peft = PeftModel.FromPretrained(VariantTestModels.LlamaTiny(), Dir("initial"), isTrainable: true);
        peft.train();
        using var opt = new LoraFaOptimizer(peft, lr: 0.001, weightDecay: 0.01) { ProjectionDType = bf16Projection ? ScalarType.BFloat16 : ScalarType.Float32 };
        var losses = bf16Projection ? Bf16Losses : Fp32Losses;
        Assert.All(peft.named_parameters().Where(p => p.name.Contains("lora_A")), p => Assert.False(p.parameter.requires_grad));
        using var snapshots = SafetensorsFile.Open(Dir("lorafa", "snapshots.safetensors"));
        for (int step = 0; step < 8; step++)
        {
            using var s = NewDisposeScope();
            opt.Lr = Lrs[step];
            var loss = HfCausalLoss(peft.Model, ids, mask, labels);
            Assert.Equal(losses[step], loss.item<float>(), 1e-5 * losses[step]);
            loss.backward();
            ClipGradNorm(opt.Parameters, 1.0);
            opt.Step();
            opt.ZeroGrad();
            // The snapshots are from the bf16 run (bf16 rounding of a near-tie moves single entries by ~1e-5 after a few
            // steps); the float32 run is checked through the probe's losses only.
            if (!bf16Projection) continue;
            var state = peft.AdapterStateDict("default");
            foreach (var key in state.Keys)
                FixtureAssert.Close(state[key], snapshots.Load($"step{step}.{key}"), null, 5e-5, $"step {step} {key}");
        }
        // The saved result is a standard LoRA adapter, A unchanged from the initial one.
        var outDir = TestPaths.TempDir();
        peft.SaveAdapter(outDir);
        Assert.IsType<LoraConfig>(PeftMethods.LoadConfig(outDir));
        using var initial = SafetensorsFile.Open(Dir("initial", AdapterFiles.WeightsFile));
        using var saved = SafetensorsFile.Open(Path.Combine(outDir, AdapterFiles.WeightsFile));
        foreach (var k in initial.Keys.Where(k => k.Contains("lora_A")))
            Assert.True(initial.Load(k).equal(saved.Load(k)).all().item<bool>(), $"{k} changed");
    }

    [Fact]
    public void Projection_is_the_identity_for_orthonormal_A_and_unit_scaling()
    {
        using var scope = NewDisposeScope();
        var model = VariantTestModels.LlamaTiny();
        var peft = PeftModel.Create(model, new LoraConfig { R = 4, LoraAlpha = 4, TargetModules = StringOrList.Of(new[] { "q_proj" }) });
        var layers = peft.AdapterLayers().Select(l => (LoraLinear)l.Layer).ToList();
        using (no_grad()) foreach (var l in layers) l.A("default").copy_(eye(4, 64));
        using var opt = new LoraFaOptimizer(peft, lr: 0.01, eps: 0);
        using var reference = new LoraFaOptimizer(peft, lr: 0.01, eps: 0);
        var g = randn(64, 4);
        var b0 = layers[0].B("default").detach().clone();
        layers[0].B("default").grad = g;
        opt.Step();
        // First Adam step with bias correction: B ← B − lr·sign(g) (m/√v = g/|g| at t = 1).
        FixtureAssert.Close(layers[0].B("default"), b0 - 0.01 * g.sign(), null, 1e-6, "B after one step");
    }
}
