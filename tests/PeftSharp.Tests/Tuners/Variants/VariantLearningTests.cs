using PeftSharp.Models;
using PeftSharp.Training;
using PeftSharp.Tuners;
using PeftSharp.Tuners.AdaLora;
using PeftSharp.Tuners.DeltaLora;
using PeftSharp.Tuners.Lora;
using PeftSharp.Tuners.LoraFa;
using PeftSharp.Tuners.Vera;
using static TorchSharp.torch;

namespace PeftSharp.Tests.Tuners.Variants;

/// <summary>
/// Evidence each variant learns: llama-tiny (random weights) on a synthetic counting task (next id = id + 1) must
/// cut its loss below a threshold in a few dozen steps. A plain AdamW loop (or LoRA-FA's optimizer), with each
/// method's step hook called after optimizer.step() as the trainer does.
/// </summary>
public class VariantLearningTests
{
    static readonly StringOrList Targets = StringOrList.Of("q_proj", "k_proj", "v_proj", "o_proj");
    const int Steps = 25;

    /// <summary>Rows of consecutive ids starting at random offsets.</summary>
    internal static Tensor CountingBatch(int rows, int length, int seed)
    {
        using var g = new Generator((ulong)seed);
        var start = randint(3, 320 - length, new long[] { rows, 1 }, generator: g);
        return start + arange(length).unsqueeze(0);
    }

    static (double First, double Last) Train(string method, double lr)
    {
        manual_seed(5);
        var model = VariantTestModels.LlamaTiny();
        PeftModel peft = method switch
        {
            "lora-fa" => PeftModel.Create(model, new LoraConfig { R = 8, LoraAlpha = 16, TargetModules = Targets }),
            "delta-lora" => PeftModel.Create(model, new DeltaLoraConfig { Lora = new LoraConfig { R = 8, LoraAlpha = 16, TargetModules = Targets }, StartSteps = 5 }),
            "vera" => PeftModel.Create(model, new VeraConfig { R = 64, TargetModules = Targets }),
            "adalora" => PeftModel.Create(model, new AdaLoraConfig { Lora = new LoraConfig { LoraAlpha = 16, TargetModules = Targets }, InitR = 12, TargetR = 8, Tinit = 3, Tfinal = 5, TotalStep = Steps }),
            _ => throw new ArgumentException(method),
        };
        peft.train();
        using var faOpt = method == "lora-fa" ? new LoraFaOptimizer(peft, lr: lr) : null;
        using var adamw = faOpt is null ? optim.AdamW(peft.parameters().Where(p => p.requires_grad), lr: lr) : null;
        ITrainingCallback? hook = method switch
        {
            "delta-lora" => new DeltaLoraUpdater(peft),
            "adalora" => new RankAllocator(peft),
            _ => null,
        };
        var ids = CountingBatch(4, 12, 1);
        double first = 0, last = 0;
        for (int step = 0; step < Steps; step++)
        {
            using var scope = NewDisposeScope();
            var loss = VariantTestModels.CausalLoss(peft.Model, ids);
            var value = loss.item<float>();
            if (step == 0) first = value;
            last = value;
            if (method == "adalora") loss = AdaLoraRegularizer.AddTo(loss, peft);
            loss.backward();
            if (faOpt is not null) faOpt.Step(); else adamw!.step();
            hook?.OnStepEnd(step);
            if (faOpt is not null) faOpt.ZeroGrad(); else adamw!.zero_grad();
        }
        (hook as IDisposable)?.Dispose();
        return (first, last);
    }

    [Theory]
    // Measured (25 steps from 6.16): LoRA-FA 2.20, Delta-LoRA 2.27, AdaLoRA 2.59, VeRA 2.89.
    [InlineData("lora-fa", 2e-2, 3.0)]
    [InlineData("delta-lora", 2e-2, 3.0)]
    [InlineData("vera", 1e-1, 3.6)]
    [InlineData("adalora", 2e-2, 3.3)]
    public void Method_learns_the_counting_task(string method, double lr, double threshold)
    {
        var (first, last) = Train(method, lr);
        Assert.True(last < threshold, $"{method}: loss {first:F3} -> {last:F3}, expected < {threshold}");
    }
}
