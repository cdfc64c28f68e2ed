using System.Diagnostics;
using System.Text.Json.Nodes;
using PeftSharp.Models;
using PeftSharp.Training;
using PeftSharp.Tuners;
using PeftSharp.Tuners.AdaLora;
using PeftSharp.Tuners.DeltaLora;
using PeftSharp.Tuners.Lora;
using PeftSharp.Tuners.LoraFa;
using PeftSharp.Tuners.Vera;
using TorchSharp;
using static TorchSharp.torch;

namespace PeftSharp.Bench.Benchmarks;

/// <summary>
/// The PEFT methods side by side: each trains the same small Llama (built in code, seeded) on the same synthetic
/// counting data (next id = id + 1) for the same steps, then reports trainable parameters, parameters the merge
/// changes, the largest rank of ΔW over the adapted matrices (ParameterAccounting), step time, peak RSS growth and
/// final train/eval loss. A method family adds rows by adding entries to <see cref="Methods"/>.
/// Options: --hidden 128 --layers 2 --seq 32 --rows 8 --steps 30 --threads 2 --only NAME.
/// </summary>
public sealed class MethodsBench : IBenchmark
{
    public string Name => "methods";
    public string Description => "LoRA, DoRA, rsLoRA, LoRA-FA, LoRA+, Delta-LoRA, VeRA, AdaLoRA: same model, data and steps; params, ΔW rank, time, memory, loss";

    /// <summary>One optimizer-like stepper over a PeftModel.</summary>
    public interface IStepper : IDisposable
    {
        void Step();
        void ZeroGrad();
    }

    sealed class TorchStepper(params optim.Optimizer[] opts) : IStepper
    {
        public void Step() { foreach (var o in opts) o.step(); }
        public void ZeroGrad() { foreach (var o in opts) o.zero_grad(); }
        public void Dispose() { foreach (var o in opts) o.Dispose(); }
    }

    sealed class LoraFaStepper(LoraFaOptimizer o) : IStepper
    {
        public void Step() => o.Step();
        public void ZeroGrad() => o.ZeroGrad();
        public void Dispose() => o.Dispose();
    }

    /// <summary>A row of the table: how to make the adapter, the optimizer, the per-step hook and the extra loss term.</summary>
    public sealed record Method(
        string Name,
        Func<PreTrainedModel, int, PeftModel> Create,
        double Lr,
        Func<PeftModel, double, IStepper>? Optimizer = null,
        Func<PeftModel, ITrainingCallback>? Hook = null,
        Func<PeftModel, Tensor, Tensor>? Loss = null);

    static readonly StringOrList Targets = StringOrList.Of("q_proj", "k_proj", "v_proj", "o_proj");

    static LoraConfig Lora(int r = 8) => new() { R = r, LoraAlpha = 2 * r, TargetModules = Targets };

    static IStepper AdamW(PeftModel p, double lr) => new TorchStepper(optim.AdamW(p.parameters().Where(x => x.requires_grad), lr: lr));

    // LoRA+ (ratio 16): B and 1-D tensors at lr·16 (two AdamW instances equal one optimizer with two groups).
    static IStepper LoraPlus(PeftModel p, double lr)
    {
        var named = p.named_parameters().Where(x => x.parameter.requires_grad).ToList();
        bool IsB((string name, TorchSharp.Modules.Parameter parameter) x) => x.name.Contains("lora_B") || x.parameter.dim() == 1;
        return new TorchStepper(
            optim.AdamW(named.Where(x => !IsB(x)).Select(x => x.parameter), lr: lr),
            optim.AdamW(named.Where(IsB).Select(x => x.parameter), lr: lr * 16));
    }

    public static readonly IReadOnlyList<Method> Methods = new Method[]
    {
        new("LoRA", (m, _) => PeftModel.Create(m, Lora()), 1e-2),
        new("DoRA", (m, _) => PeftModel.Create(m, Lora() with { UseDora = true }), 1e-2),
        new("rsLoRA", (m, _) => PeftModel.Create(m, Lora() with { UseRsLora = true }), 1e-2),
        new("LoRA-FA", (m, _) => PeftModel.Create(m, Lora()), 1e-2, (p, lr) => new LoraFaStepper(new LoraFaOptimizer(p, lr: lr))),
        new("LoRA+", (m, _) => PeftModel.Create(m, Lora()), 5e-3, LoraPlus),
        new("Delta-LoRA", (m, steps) => PeftModel.Create(m, new DeltaLoraConfig { Lora = Lora(), StartSteps = steps / 4 }), 1e-2, Hook: p => new DeltaLoraUpdater(p)),
        new("VeRA", (m, _) => PeftModel.Create(m, new VeraConfig { R = 128, TargetModules = Targets }), 5e-2),
        new("AdaLoRA", (m, steps) => PeftModel.Create(m, new AdaLoraConfig { Lora = Lora() with { LoraAlpha = 16 }, InitR = 12, TargetR = 8, Tinit = steps / 10, Tfinal = steps / 5, TotalStep = steps }), 1e-2,
            Hook: p => new RankAllocator(p), Loss: (p, l) => AdaLoraRegularizer.AddTo(l, p)),
    };

    static Tensor Counting(int rows, int length, int vocab, int seed)
    {
        using var g = new Generator((ulong)seed);
        return randint(3, vocab - length, new long[] { rows, 1 }, generator: g) + arange(length).unsqueeze(0);
    }

    static Tensor CausalLoss(PreTrainedModel model, Tensor ids)
    {
        var logits = model.Forward(new ModelInputs { InputIds = ids }).Logits;
        long v = logits.shape[2], t = ids.shape[1];
        return nn.functional.cross_entropy(logits.narrow(1, 0, t - 1).reshape(-1, v), ids.narrow(1, 1, t - 1).reshape(-1));
    }

    static long RssPeakKb()
    {
        foreach (var line in File.ReadLines("/proc/self/status"))
            if (line.StartsWith("VmHWM:")) return long.Parse(line.Split(' ', StringSplitOptions.RemoveEmptyEntries)[1]);
        return 0;
    }

    static long RssKb()
    {
        foreach (var line in File.ReadLines("/proc/self/status"))
            if (line.StartsWith("VmRSS:")) return long.Parse(line.Split(' ', StringSplitOptions.RemoveEmptyEntries)[1]);
        return 0;
    }

    // Linux: writing 5 to clear_refs resets the peak RSS (VmHWM) to the current RSS.
    static void ResetPeak()
    {
        try { File.WriteAllText("/proc/self/clear_refs", "5"); } catch (IOException) { } catch (UnauthorizedAccessException) { }
    }

    public BenchResult Run(BenchOptions o)
    {
        int hidden = o.GetInt("hidden", 128), layers = o.GetInt("layers", 2), seq = o.GetInt("seq", 32), rows = o.GetInt("rows", 8);
        int steps = o.GetInt("steps", 30), threads = o.GetInt("threads", 2), vocab = 512;
        var only = o.Get("only", "");
        set_num_threads(threads);
        var config = AutoModel.ParseConfig(new JsonObject
        {
            ["model_type"] = "llama", ["hidden_size"] = hidden, ["num_hidden_layers"] = layers, ["num_attention_heads"] = Math.Max(1, hidden / 32),
            ["num_key_value_heads"] = Math.Max(1, hidden / 64), ["intermediate_size"] = hidden * 2, ["vocab_size"] = vocab,
            ["tie_word_embeddings"] = false, ["rms_norm_eps"] = 1e-6,
        }, "bench config");
        var train = Counting(rows, seq, vocab, 1);
        var eval = Counting(rows, seq, vocab, 2);
        var result = new BenchResult { Columns = new[] { "method", "lr", "trainable", "changed by merge", "max rank ΔW", "ms/step", "peak RSS +MB", "train loss", "eval loss" } };
        foreach (var method in Methods.Where(m => only.Length == 0 || m.Name.Equals(only, StringComparison.OrdinalIgnoreCase)))
        {
            manual_seed(0);
            using var model = AutoModel.FromConfig(config);
            manual_seed(1);
            var peft = method.Create(model, steps);
            peft.train();
            using var stepper = (method.Optimizer ?? AdamW)(peft, method.Lr);
            var hook = method.Hook?.Invoke(peft);
            GC.Collect();
            long rss0 = RssKb();
            ResetPeak();
            double trainLoss = 0;
            var sw = Stopwatch.StartNew();
            for (int step = 0; step < steps; step++)
            {
                using var scope = NewDisposeScope();
                var loss = CausalLoss(peft.Model, train);
                trainLoss = loss.item<float>();
                if (method.Loss is { } extra) loss = extra(peft, loss);
                loss.backward();
                stepper.Step();
                hook?.OnStepEnd(step);
                stepper.ZeroGrad();
            }
            sw.Stop();
            long peak = RssPeakKb() - rss0;
            (hook as IDisposable)?.Dispose();
            peft.eval();
            double evalLoss;
            using (no_grad()) using (var s = NewDisposeScope()) evalLoss = CausalLoss(peft.Model, eval).item<float>();
            var report = peft.ParameterReport();
            long maxRank = report.Modules.Count == 0 ? 0 : report.Modules.Max(m => m.DeltaRank);
            result.Add(method.Name, method.Lr, report.TrainableParameters, report.MergedChangedParameters, maxRank,
                sw.Elapsed.TotalMilliseconds / steps, peak / 1024.0, trainLoss, evalLoss);
        }
        result.Notes.Add($"Llama hidden={hidden} layers={layers} vocab={vocab}, attention q/k/v/o adapted, {rows}x{seq} counting rows, {steps} steps, {threads} threads.");
        result.Notes.Add("train loss: the last step's (before its update); eval loss: held-out rows after training. LoRA-family r=8, alpha=16; VeRA r=128; AdaLoRA init_r=12 -> target_r=8; LoRA+ ratio 16; Delta-LoRA lambda=2 from step steps/4.");
        result.Notes.Add("changed by merge / max rank ΔW: ParameterAccounting (merged weights vs the base; Delta-LoRA counts its folded W updates too).");
        return result;
    }
}
