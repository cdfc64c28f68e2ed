using System.Diagnostics;
using PeftSharp.Models;
using PeftSharp.Runtime;
using PeftSharp.Training;
using PeftSharp.Tuners;
using TorchSharp;
using static TorchSharp.torch;

namespace PeftSharp.Bench.Benchmarks;

/// <summary>
/// Where a train-step's time goes: the same model, batch and optimizer as <c>train-step</c>, one step taken phase by
/// phase (forward, loss forward+backward on detached logits, the model's backward, clipping, AdamW), with the forward
/// split per module kind by forward hooks (inclusive times; "attention core + residuals" is the forward's remainder:
/// RoPE, SDPA, reshapes, residual adds). Then the elementwise pieces alone on the step's shapes, forward + backward.
/// On the CPU every op is synchronous, so wall clocks around calls are exact; CPU is the process's user + sys time.
/// </summary>
public sealed class TrainProfileBench : IBenchmark
{
    public string Name => "train-profile";
    public string Description => "train-step's time per phase and module kind: --mode full|lora [--steps 4] [--warmup 1] [--threads 1] [--reps 5]";

    sealed class Clock
    {
        public readonly Dictionary<string, List<(double Wall, double Cpu)>> Samples = new();
        public void Add(string key, double wall, double cpu)
        {
            if (!Samples.TryGetValue(key, out var l)) Samples[key] = l = new();
            l.Add((wall, cpu));
        }

        public T Time<T>(string key, Func<T> f)
        {
            var cpu0 = Environment.CpuUsage.TotalTime;
            var sw = Stopwatch.StartNew();
            var r = f();
            Add(key, sw.Elapsed.TotalMilliseconds, (Environment.CpuUsage.TotalTime - cpu0).TotalMilliseconds);
            return r;
        }
    }

    static readonly string[] Kinds = { "embed_tokens", "input_layernorm", "q_proj", "k_proj", "v_proj", "o_proj", "post_attention_layernorm", "mlp", "gate_proj", "up_proj", "down_proj", "norm", "lm_head" };
    // Top-level pieces of the forward whose sum leaves the attention core and residual adds.
    static readonly string[] TopLevel = { "embed_tokens", "input_layernorm", "q_proj", "k_proj", "v_proj", "o_proj", "post_attention_layernorm", "mlp", "norm", "lm_head" };

    public BenchResult Run(BenchOptions o)
    {
        var mode = o.Get("mode", "lora");
        if (o.Get("micro-only", "false") == "true")
        {
            TorchRuntime.EnsureInitialized();
            ThreadPolicy.Fix(o.GetInt("threads", 1));
            var micro = new BenchResult { Columns = new[] { "section", "wall ms (median)", "CPU ms (median)", "calls" } };
            Seq = o.GetInt("seq", 256);
            Micro(micro, o.GetInt("reps", 5));
            micro.Notes.Add($"MKL code path (mkl_serv_cpu_detect): {MklAmdDispatch.MklCpuBranch()?.ToString() ?? "n/a"}");
            return micro;
        }
        int steps = o.GetInt("steps", 4), warmup = o.GetInt("warmup", 1), reps = o.GetInt("reps", 5);
        if (mode is not ("full" or "lora")) throw new ArgumentException($"--mode {mode}: expected full or lora");
        TorchRuntime.EnsureInitialized();
        ThreadPolicy.Fix(o.GetInt("threads", 1));
        manual_seed(0);
        using var model = BenchLlama.Build();
        var target = mode == "full" ? TrainingTarget.Full(model) : BenchLora.Target(model, rank: 16);
        using var optimizer = new AdamW(OptimizerGroups.Default(target.Root, 1e-4, 0.0));
        var trainable = optimizer.Groups.SelectMany(g => g.Params).Select(p => p.Param).ToList();

        var clock = new Clock();
        var forwardStart = new Dictionary<nn.Module, (long Ticks, TimeSpan Cpu)>();
        bool record = false;
        var hooks = new List<Action>();
        foreach (var (name, m) in target.Root.named_modules())
        {
            var kind = name.Split('.')[^1];
            if (!Kinds.Contains(kind) || m is not nn.Module<Tensor, Tensor> hookable) continue;
            var pre = hookable.register_forward_pre_hook((mod, x) => { forwardStart[mod] = (Stopwatch.GetTimestamp(), Environment.CpuUsage.TotalTime); return null; });
            hooks.Add(pre.remove);
            var post = hookable.register_forward_hook((mod, x, y) =>
            {
                var (t0, c0) = forwardStart[mod];
                if (record) clock.Add("forward: " + kind, Stopwatch.GetElapsedTime(t0).TotalMilliseconds, (Environment.CpuUsage.TotalTime - c0).TotalMilliseconds);
                return null;
            });
            hooks.Add(post.remove);
        }

        var rng = new Random(1);
        using var ids = tensor(Enumerable.Range(0, 4 * 256).Select(_ => (long)rng.Next(3, 8192)).ToArray(), new long[] { 4, 256 });
        var collector = new PeriodicCollector();
        for (int step = 0; step < warmup + steps; step++)
        {
            record = step >= warmup;
            var c = record ? clock : new Clock();
            using (var scope = NewDisposeScope())
            {
                var logits = c.Time("forward (model)", () => target.Forward(new ModelInputs { InputIds = ids }).Logits);
                var detached = logits.detach().requires_grad_(true);
                c.Time("loss forward+backward", () => { var l = Losses.CausalLM(detached, ids, 4 * 255); l.backward(); return l.ToDouble(); });
                c.Time("backward (model)", () => { logits.backward(new[] { detached.grad! }); return 0; });
                c.Time("clip_grad_norm", () =>
                {
                    // Trainer.ClipGradNorm's ops.
                    using var _ = no_grad();
                    var grads = trainable.Select(p => p.grad!).ToList();
                    var total = stack(grads.Select(g => linalg.vector_norm(g, 2)).ToArray()).norm();
                    var coef = (1.0 / (total + 1e-6)).clamp_max(1.0);
                    foreach (var g in grads) g.mul_(coef);
                    return total.ToDouble();
                });
            }
            c.Time("optimizer (AdamW)", () => { optimizer.Step(); return 0; });
            c.Time("zero_grad + collector", () => { optimizer.ZeroGrad(); collector.Tick(); return 0; });
        }
        foreach (var remove in hooks) remove();
        record = false;

        var result = new BenchResult { Columns = new[] { "section", "wall ms/step (median)", "CPU ms/step (median)", "calls/step" } };
        double Median(IEnumerable<double> v) { var a = v.OrderBy(x => x).ToArray(); return a[a.Length / 2]; }
        // Per-step sums of each key (module kinds are called once per layer).
        (double Wall, double Cpu, int Calls) PerStep(string key)
        {
            var l = clock.Samples[key];
            int calls = l.Count / steps;
            var walls = Enumerable.Range(0, steps).Select(s => l.Skip(s * calls).Take(calls).Sum(x => x.Wall));
            var cpus = Enumerable.Range(0, steps).Select(s => l.Skip(s * calls).Take(calls).Sum(x => x.Cpu));
            return (Median(walls), Median(cpus), calls);
        }
        double stepWall = 0, stepCpu = 0;
        foreach (var key in new[] { "forward (model)", "loss forward+backward", "backward (model)", "clip_grad_norm", "optimizer (AdamW)", "zero_grad + collector" })
        {
            var (w, cpu, calls) = PerStep(key);
            stepWall += w; stepCpu += cpu;
            result.Add(key, w, cpu, calls);
        }
        result.Add("step (sum of phases)", stepWall, stepCpu, 1);
        double topWall = 0, topCpu = 0;
        foreach (var kind in Kinds.Where(k => clock.Samples.ContainsKey("forward: " + k)))
        {
            var (w, cpu, calls) = PerStep("forward: " + kind);
            if (TopLevel.Contains(kind)) { topWall += w; topCpu += cpu; }
            result.Add("  forward: " + kind + (kind == "mlp" ? " (incl. gate/up/down)" : ""), w, cpu, calls);
        }
        var (fw, fc, _) = PerStep("forward (model)");
        result.Add("  forward: attention core + residuals (remainder)", fw - topWall, fc - topCpu, 8);

        Micro(result, reps);
        result.Notes.Add($"MKL code path (mkl_serv_cpu_detect): {MklAmdDispatch.MklCpuBranch()?.ToString() ?? "n/a"}");
        result.Notes.Add($"{mode}: {steps} profiled steps after {warmup} warm-up, batch 4 x 256, torch threads {ThreadPolicy.Status}; " +
            "forward rows are inclusive hook times (mlp includes its projections); micro rows: one layer's op on the step's shapes, forward + backward, median of " + reps + ".");
        return result;
    }

    /// <summary>The step's elementwise and attention pieces alone (one layer's worth), forward + backward.</summary>
    static long Seq = 256;

    static void Micro(BenchResult result, int reps)
    {
        long B = 4, T = Seq, H = 8, D = 64, Hidden = 512, Ffn = 1376, Vocab = 8192;
        manual_seed(2);
        using var x = randn(B, T, Hidden);
        using var q = randn(B, H, T, D);
        using var k = randn(B, H, T, D);
        using var v = randn(B, H, T, D);
        using var gate = randn(B, T, Ffn);
        using var up = randn(B, T, Ffn);
        using var logits = randn(B * T, Vocab);
        using var labels = randint(0, Vocab, new long[] { B * T });
        using var mask = AttentionMasks.Causal(B, T, 0, null, CPU);
        using var positions = arange(T).unsqueeze(0).expand(B, T);
        var config = (LlamaConfig)AutoModel.ParseConfig(new System.Text.Json.Nodes.JsonObject
        {
            ["model_type"] = "llama", ["vocab_size"] = Vocab, ["hidden_size"] = Hidden, ["intermediate_size"] = Ffn,
            ["num_hidden_layers"] = 1, ["num_attention_heads"] = H,
        });
        using var invFreq = Rope.InverseFrequencies(config);
        var (cos, sin) = Rope.CosSin(invFreq, positions, ScalarType.Float32);
        using var norm = new LlamaRMSNorm(Hidden, 1e-6);
        using var w1 = randn(Ffn, Hidden) * 0.02;
        using var w2 = randn(Hidden, Hidden) * 0.02;
        using var wHead = randn(Vocab, Hidden) * 0.02;

        void Row(string name, Func<Tensor[], Tensor> f, params Tensor[] inputs)
        {
            var walls = new List<double>(); var cpus = new List<double>();
            for (int r = 0; r < reps + 1; r++)
            {
                using var scope = NewDisposeScope();
                var leaves = inputs.Select(t => t.detach().requires_grad_(true)).ToArray();
                var cpu0 = Environment.CpuUsage.TotalTime;
                var sw = Stopwatch.StartNew();
                var y = f(leaves);
                y.backward(new[] { ones_like(y) });
                if (r == 0) continue;
                walls.Add(sw.Elapsed.TotalMilliseconds);
                cpus.Add((Environment.CpuUsage.TotalTime - cpu0).TotalMilliseconds);
            }
            walls.Sort(); cpus.Sort();
            result.Add("micro fwd+bwd: " + name, walls[walls.Count / 2], cpus[cpus.Count / 2], "-");
        }

        Row("RMSNorm [4,256,512]", a => norm.call(a[0]), x);
        using var cos4 = cos.unsqueeze(1);
        using var sin4 = sin.unsqueeze(1);
        Row("RoPE q and k, unfused", a => a[0] * cos4 + Rope.RotateHalf(a[0]) * sin4 + a[1] * cos4 + Rope.RotateHalf(a[1]) * sin4, q, k);
        Row("RoPE q and k, fast path", a => Rope.Rotate(a[0], cos4, sin4) + Rope.Rotate(a[1], cos4, sin4), q, k);
        Row("SDPA, boolean causal mask", a => Attention.Sdpa(a[0], a[1], a[2], mask), q, k, v);
        Row("SDPA, is_causal", a => nn.functional.scaled_dot_product_attention(a[0], a[1], a[2], is_casual: true), q, k, v);
        // Built inside each timed row, as Attention.Sdpa builds it per call.
        Tensor Additive() => zeros(mask.shape).masked_fill_(mask.logical_not(), float.MinValue);
        Row("eager attention fp32, additive mask", a =>
        {
            var w = (a[0] * (1.0 / Math.Sqrt(D))).matmul(a[1].transpose(-2, -1));
            w = w + Additive();
            return w.softmax(-1).matmul(a[2]);
        }, q, k, v);
        // The alternative measured in session 4 and not kept (memory): causal query blocks that skip the keys after them.
        Row("eager attention fp32, 2 causal query blocks", a =>
        {
            var add = Additive();
            var qs = a[0] * (1.0 / Math.Sqrt(D));
            long half = T / 2;
            var blocks = new[] { (0L, half), (half, T) }.Select(b =>
            {
                var w = qs.narrow(2, b.Item1, b.Item2 - b.Item1).matmul(a[1].narrow(2, 0, b.Item2).transpose(-2, -1)) + add.narrow(2, b.Item1, b.Item2 - b.Item1).narrow(3, 0, b.Item2);
                return w.softmax(-1).matmul(a[2].narrow(2, 0, b.Item2));
            });
            return cat(blocks.ToArray(), 2);
        }, q, k, v);
        Row("SDPA, no mask (not causal)", a => nn.functional.scaled_dot_product_attention(a[0], a[1], a[2]), q, k, v);
        Row("SwiGLU silu(gate)*up [4,256,1376]", a => nn.functional.silu(a[0]) * a[1], gate, up);
        Row("residual add [4,256,512]", a => a[0] + a[1], x, x);
        Row("cross entropy [1024,8192]", a => nn.functional.cross_entropy(a[0], labels), logits);
        Row("GEMM 512->1376 (gate), dx and dW", a => nn.functional.linear(a[0], a[1]), x, w1);
        Row("GEMM 512->512 (q), dx and dW", a => nn.functional.linear(a[0], a[1]), x, w2);
        Row("GEMM 512->8192 (lm_head), dx and dW", a => nn.functional.linear(a[0], a[1]), x, wHead);
        cos.Dispose(); sin.Dispose();
    }
}
