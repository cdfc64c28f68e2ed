using System.Diagnostics;
using PeftSharp.Runtime;
using PeftSharp.Training;
using static TorchSharp.torch;

namespace PeftSharp.Bench.Benchmarks;

/// <summary>
/// What bf16 storage costs a frozen Linear on a CPU without native bf16 (<see cref="Bf16StoredLinear"/>): forward x·Wᵀ
/// plus backward dy·W on the train-step model's weight shapes, from a float32 W, from a bfloat16 W widened whole into
/// one buffer (the trainer's way), and from a bfloat16 W widened in row blocks that are multiplied while still in
/// cache (<c>--block</c> rows), plus the two widenings alone. Median of <c>--reps</c> after one warm-up.
/// </summary>
public sealed class Bf16WidenBench : IBenchmark
{
    public string Name => "bf16-widen";
    public string Description => "bf16-stored Linear, forward + dx: float32 W vs widened whole vs widened in row blocks: [--threads 2] [--reps 20] [--block 64]";

    public BenchResult Run(BenchOptions o)
    {
        TorchRuntime.EnsureInitialized();
        ThreadPolicy.Fix(o.GetInt("threads", 2));
        int reps = o.GetInt("reps", 20);
        long block = o.GetInt("block", 64);
        var result = new BenchResult { Columns = new[] { "tokens", "weight N×K", "float32 W ms", "widened whole ms", $"widened in {block}-row blocks ms", "the two widenings alone ms" } };
        foreach (var m in new long[] { 32, 1024 })
            foreach (var (n, k) in new (long, long)[] { (512, 512), (1376, 512), (512, 1376), (8192, 512) })
            {
                using var scope = NewDisposeScope();
                manual_seed(0);
                var wide = randn(n, k) * 0.02;
                var stored = wide.to(ScalarType.BFloat16);
                var x = randn(m, k);
                var dy = randn(m, n);
                var whole = empty(n * k);
                var rows = empty(block * k);
                double Median(Action a)
                {
                    a();
                    var times = new List<double>();
                    for (int r = 0; r < reps; r++) { var sw = Stopwatch.StartNew(); a(); times.Add(sw.Elapsed.TotalMilliseconds); }
                    times.Sort();
                    return times[times.Count / 2];
                }
                double fp32 = Median(() => { using var s = NewDisposeScope(); x.mm(wide.t()); dy.mm(wide); });
                double widened = Median(() =>
                {
                    using var s = NewDisposeScope();
                    x.mm(Widen(stored, whole, 0, n, k).t());
                    dy.mm(Widen(stored, whole, 0, n, k));
                });
                double blocked = Median(() =>
                {
                    using var s = NewDisposeScope();
                    var y = empty(m, n);
                    var dx = zeros(m, k);
                    for (long r0 = 0; r0 < n; r0 += block)
                    {
                        using var inner = NewDisposeScope();
                        long r = Math.Min(block, n - r0);
                        var w = Widen(stored, rows, r0, r, k);
                        y.narrow(1, r0, r).copy_(x.mm(w.t()));
                        dx.addmm_(dy.narrow(1, r0, r), w);
                    }
                });
                double alone = Median(() => { using var s = NewDisposeScope(); Widen(stored, whole, 0, n, k); Widen(stored, whole, 0, n, k); });
                result.Add(m, $"{n}×{k}", fp32, widened, blocked, alone);
            }
        result.Notes.Add($"threads {ThreadPolicy.Status}; one forward x·Wᵀ and one dx = dy·W per row, median of {reps}.");
        return result;
    }

    /// <summary>Rows [r0, r0 + r) of the bfloat16 weight widened into the front of <paramref name="buffer"/>.</summary>
    static Tensor Widen(Tensor stored, Tensor buffer, long r0, long r, long k) =>
        buffer.narrow(0, 0, r * k).view(r, k).copy_(stored.narrow(0, r0, r));
}
