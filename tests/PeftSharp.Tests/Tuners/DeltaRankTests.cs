using PeftSharp.Models;
using PeftSharp.Tests.Training;
using PeftSharp.Training;
using PeftSharp.Tuners;
using PeftSharp.Tuners.Lora;
using static TorchSharp.torch;

namespace PeftSharp.Tests.Tuners;

/// <summary>The rank of ΔW comes from the adapter's factors (QR of each, r×r SVD), not from an SVD of W' − W.</summary>
public class DeltaRankTests
{
    [Fact]
    public void Factor_rank_matches_matrix_rank_of_the_product()
    {
        manual_seed(2);
        using var scope = NewDisposeScope();
        foreach (var (m, r, n, inner) in new[] { (64, 8, 48, 8), (64, 8, 48, 3), (30, 16, 200, 5), (8, 8, 8, 8) })
        {
            // left·right has rank `inner` exactly: left's last r − inner columns repeat its first ones.
            var basis = randn(m, inner);
            var left = cat(Enumerable.Range(0, r).Select(i => basis.narrow(1, i % inner, 1)).ToArray(), 1);
            var right = randn(r, n);
            long want = linalg.matrix_rank(left.to(ScalarType.Float64).matmul(right.to(ScalarType.Float64))).item<long>();
            Assert.Equal(inner, want);
            Assert.Equal(want, ParameterAccounting.FactorRank(left, right));
        }
        Assert.Equal(0, ParameterAccounting.FactorRank(zeros(64, 8), randn(8, 32)));
    }

    [Fact]
    public void A_trained_rank_8_lora_reports_at_most_rank_8()
    {
        using var model = TrainerTests.TinyLlama(hidden: 64);
        manual_seed(4);
        var peft = PeftModel.Create(model, new LoraConfig { R = 8, LoraAlpha = 16, TargetModules = StringOrList.Of(TargetMatcher.AllLinear) });
        var args = new TrainingArguments { OutputDir = TestPaths.TempDir(), LearningRate = 1e-2, MaxSteps = 3, PerDeviceTrainBatchSize = 4, Shuffle = false };
        TrainerTests.Run(AdapterTargets.Peft(peft) with { Save = _ => { } }, args, TrainerTests.Rows(8));
        var report = peft.ParameterReport();
        Assert.NotEmpty(report.Modules);
        // Trained B is non-zero and generic: every ΔW has the full rank 8 (an SVD of W' − W saw rounding noise as rank).
        Assert.All(report.Modules, m => Assert.Equal(8, m.DeltaRank));
    }

    [Fact]
    public void A_lora_whose_b_has_rank_3_reports_rank_3()
    {
        using var model = TrainerTests.TinyLlama(hidden: 64);
        var peft = PeftModel.Create(model, new LoraConfig { R = 8, LoraAlpha = 16, TargetModules = StringOrList.Of("q_proj", "v_proj") });
        manual_seed(9);
        using (no_grad())
            foreach (var (name, p) in peft.named_parameters().Where(p => p.name.Contains("lora_B")))
                p.copy_(randn(p.shape[0], 3).matmul(randn(3, p.shape[1])));
        Assert.All(peft.ParameterReport().Modules, m => Assert.Equal(3, m.DeltaRank));
    }
}
