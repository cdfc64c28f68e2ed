using PeftSharp.Tuners;
using PeftSharp.Tuners.AdaLora;
using PeftSharp.Tuners.Lora;
using static TorchSharp.torch;

namespace PeftSharp.Tests.Tuners.Variants;

public class AdaLoraTests
{
    static AdaLoraConfig Config(int totalStep = 10, int tinit = 0, int tfinal = 0, int deltaT = 1) => new()
    {
        Lora = new LoraConfig { TargetModules = StringOrList.Of("q_proj", "v_proj"), LoraAlpha = 8 },
        InitR = 6, TargetR = 3, TotalStep = totalStep, Tinit = tinit, Tfinal = tfinal, DeltaT = deltaT,
    };

    [Theory]
    [InlineData(0, 120, false)]
    [InlineData(200, 120, false)]
    [InlineData(201, 119, true)]
    [InlineData(1000, 110, true)]
    [InlineData(5000, 83, true)]
    [InlineData(8999, 80, true)]
    [InlineData(9001, 80, true)]
    public void Budget_schedule_matches_the_cubic_formula(int step, int budget, bool mask)
    {
        // 10 matrices, init_r 12, target_r 8, tinit 200, tfinal 1000, total 10000 (adapters-quant-spec §8.3 vector).
        Assert.Equal((budget, mask), RankAllocator.BudgetSchedule(step, 120, 80, 200, 1000, 10000, 1));
    }

    [Fact]
    public void Budget_schedule_masks_only_every_deltaT_steps_in_the_budget_phase()
    {
        Assert.False(RankAllocator.BudgetSchedule(7, 24, 12, 5, 10, 30, 3).Mask);
        Assert.True(RankAllocator.BudgetSchedule(9, 24, 12, 5, 10, 30, 3).Mask);
        // (24-12)·(1 - 4/15)³ + 12 = 16.73 → 16.
        Assert.Equal(16, RankAllocator.BudgetSchedule(9, 24, 12, 5, 10, 30, 3).Budget);
    }

    [Fact]
    public void Allocator_masks_the_lowest_triplet_scores_computed_by_hand()
    {
        using var scope = NewDisposeScope();
        var peft = PeftModel.Create(VariantTestModels.LlamaTiny(), Config());
        var layers = peft.AdapterLayers().Select(l => (l.Name, Layer: (AdaLoraLinear)l.Layer)).OrderBy(l => l.Name, StringComparer.Ordinal).ToList();
        using (no_grad()) foreach (var (_, l) in layers) l.E("default").normal_(0, 1);
        var ids = VariantTestModels.Batch(2, 8, 1);
        VariantTestModels.CausalLoss(peft.Model, ids).backward();

        // One EMA update from zero: avg = (1-β1)I, unc = (1-β2)|I - avg| = (1-β2)β1·I, score = (1-β1)(1-β2)β1·I².
        const double b = 0.85;
        double Score(float p, float g) { double i = Math.Abs((double)p * g); return (1 - b) * (1 - b) * b * i * i; }
        var triplets = new List<(string Name, int Index, double Score)>();
        foreach (var (name, l) in layers)
        {
            var a = l.A("default"); var e = l.E("default"); var bb = l.B("default");
            float[] av = a.data<float>().ToArray(), ag = a.grad!.data<float>().ToArray();
            float[] ev = e.data<float>().ToArray(), eg = e.grad!.data<float>().ToArray();
            float[] bv = bb.data<float>().ToArray(), bg = bb.grad!.data<float>().ToArray();
            int r = 6; long inF = a.shape[1], outF = bb.shape[0];
            for (int i = 0; i < r; i++)
            {
                double sa = 0, sb = 0;
                for (long j = 0; j < inF; j++) sa += Score(av[i * inF + j], ag[i * inF + j]);
                for (long o = 0; o < outF; o++) sb += Score(bv[o * r + i], bg[o * r + i]);
                triplets.Add((name, i, Score(ev[i], eg[i]) + sa / inF + sb / outF));
            }
        }
        // Step 1 of 10: budget = int((24-12)·0.9³ + 12) = 20 → the 4 lowest of 24 triplets are dropped.
        var dropped = triplets.OrderBy(t => t.Score).Take(4).Select(t => (t.Name, t.Index)).ToHashSet();

        using var allocator = new RankAllocator(peft);
        Assert.Equal((24, 12), (allocator.InitBudget, allocator.TargetBudget));
        var pattern = allocator.UpdateAndAllocate(1)!;
        foreach (var (name, l) in layers)
        {
            var e = l.E("default").data<float>().ToArray();
            for (int i = 0; i < 6; i++)
            {
                bool drop = dropped.Contains((name, i));
                Assert.Equal(!drop, pattern[name + ".lora_E"][i]);
                Assert.Equal(drop, e[i] == 0);
            }
        }
        Assert.Same(pattern, ((AdaLoraConfig)peft.ActiveConfig).RankPattern);
    }

    [Fact]
    public void Training_run_prunes_to_target_saves_pruned_tensors_and_reloads_to_the_same_logits()
    {
        using var scope = NewDisposeScope();
        var peft = PeftModel.Create(VariantTestModels.LlamaTiny(), Config(totalStep: 12, tinit: 2, tfinal: 4));
        var ids = VariantTestModels.Batch(2, 8, 2);
        var trainable = peft.parameters().Where(p => p.requires_grad).ToList();
        using var opt = optim.AdamW(trainable, lr: 0.005);
        using var allocator = new RankAllocator(peft);
        var nonzero = new List<int>();
        for (int step = 0; step < 12; step++)
        {
            using var s = NewDisposeScope();
            opt.zero_grad();
            var loss = AdaLoraRegularizer.AddTo(VariantTestModels.CausalLoss(peft.Model, ids), peft);
            loss.backward();
            opt.step();
            allocator.OnStepEnd(step);
            nonzero.Add(peft.AdapterLayers().Sum(l => (int)((AdaLoraLinear)l.Layer).E("default").ne(0).sum().item<long>()));
        }
        Assert.Equal(24, nonzero[0]);
        Assert.Equal(12, nonzero[^1]);
        Assert.True(nonzero.Zip(nonzero.Skip(1)).All(p => p.Second <= p.First), string.Join(",", nonzero));

        var dir = TestPaths.TempDir();
        peft.SaveAdapter(dir);
        var state = peft.AdapterStateDict("default");
        Assert.Equal(12, state.Where(kv => kv.Key.EndsWith("lora_E")).Sum(kv => kv.Value.shape[0]));
        var config = (AdaLoraConfig)PeftMethods.LoadConfig(dir);
        Assert.Equal(12, config.RankPattern!.Values.Sum(v => v.Count(k => k)));

        peft.eval();
        using var _ = no_grad();
        var expected = peft.Forward(new PeftSharp.Models.ModelInputs { InputIds = ids }).Logits;
        var reloaded = PeftModel.FromPretrained(VariantTestModels.LlamaTiny(), dir);
        FixtureAssert.Close(reloaded.Forward(new PeftSharp.Models.ModelInputs { InputIds = ids }).Logits, expected, null, 1e-5, "reloaded pruned adapter");
    }

    [Fact]
    public void Orthogonal_penalty_is_the_mean_frobenius_distance_to_identity()
    {
        using var scope = NewDisposeScope();
        var peft = PeftModel.Create(VariantTestModels.LlamaTiny(), Config());
        var terms = new List<double>();
        foreach (var (_, l) in peft.AdapterLayers())
        {
            var layer = (AdaLoraLinear)l;
            var a = layer.A("default").to(ScalarType.Float64);
            var b = layer.B("default").to(ScalarType.Float64);
            terms.Add((a.matmul(a.t()) - eye(6, dtype: ScalarType.Float64)).pow(2).sum().sqrt().item<double>());
            terms.Add((b.t().matmul(b) - eye(6, dtype: ScalarType.Float64)).pow(2).sum().sqrt().item<double>());
        }
        Assert.Equal(terms.Average(), AdaLoraRegularizer.OrthogonalPenalty(peft).item<float>(), 4);
    }

    [Fact]
    public void Missing_total_step_is_refused_for_training()
    {
        var e = Assert.Throws<PeftConfigException>(() => PeftModel.Create(VariantTestModels.LlamaTiny(), Config() with { TotalStep = null }));
        Assert.Contains("total_step", e.Message);
    }
}
