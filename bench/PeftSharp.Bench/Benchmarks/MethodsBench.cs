using System.Diagnostics;
using System.Runtime.InteropServices;
using System.Text.Json.Nodes;
using PeftSharp.Inference;
using PeftSharp.Models;
using PeftSharp.Training;
using PeftSharp.Tuners;
using TorchSharp;
using static TorchSharp.torch;

namespace PeftSharp.Bench.Benchmarks;

/// <summary>
/// The PEFT methods side by side: each trains the same small Llama (built in code, seeded) on the same synthetic
/// counting data (next id = id + 1) for the same steps, then reports trainable parameters, parameters the merge
/// changes, the largest rank of ΔW over the adapted matrices (ParameterAccounting), step time, peak RSS growth,
/// final train/eval loss and the inference latency of greedy generation with the trained adapter against the base
/// model. Three families: LoRA (and its variants), prompt (Prompt Tuning, P-Tuning, Prefix Tuning, LLaMA-Adapter) and
/// adapters (AdapterHub bottlenecks, AdapterDrop, AdapterFusion, BitFit, MAM, UniPELT). A method adds a row by adding
/// a <see cref="BenchEntry"/> to its method's <see cref="IPeftMethod.Bench"/> (in its folder). Every loss goes through the PeftModel's forward (virtual tokens, prefixes and
/// AdapterHub hooks apply) and counts only the real token positions.
/// Options: --hidden 128 --layers 2 --seq 32 --rows 8 --steps 30 --threads 2 --new 16 --repeat 7
/// --only NAME --family lora|prompt|adapter.
/// </summary>
public sealed class MethodsBench : IBenchmark
{
    public string Name => "methods";
    public string Description => "LoRA family, prompt family and adapter family: same model, data and steps; params, ΔW rank, time, memory, loss, inference latency vs base";

    public static readonly IReadOnlyList<string> Families = new[] { "lora", "prompt", "adapter" };

    /// <summary>One optimizer-like stepper over a PeftModel.</summary>
    interface IStepper : IDisposable
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

    sealed class MethodStepper(IOptimizer o) : IStepper
    {
        public void Step() => o.Step();
        public void ZeroGrad() => o.ZeroGrad();
        public void Dispose() => o.Dispose();
    }

    /// <summary>
    /// The rows: every registered method's <see cref="IPeftMethod.Bench"/> entries, grouped by family. A method adds a
    /// row in its own folder; the row is built through its recipe like `peft train` and trained with the recipe's hooks.
    /// </summary>
    public static IReadOnlyList<(BenchEntry Entry, IPeftMethod Method)> Methods =>
        PeftMethods.All.SelectMany(m => m.Bench.Select(e => (e, m))).OrderBy(r => IndexOf(Families, r.e.Family)).ToList();

    static int IndexOf(IReadOnlyList<string> list, string item) => list.Contains(item) ? list.ToList().IndexOf(item) : list.Count;

    /// <summary>The generic recipe settings of every row (a row may change them): LoRA r=8, alpha=16 on attention q/k/v/o.</summary>
    static readonly RecipeSettings BenchSettings = new() { LoraRank = 8, LoraAlpha = 16, LoraTarget = "q_proj,k_proj,v_proj,o_proj", Source = "methods bench" };

    /// <summary>The row's adapter and its training hooks, as `peft train` builds them from the row's recipe.</summary>
    static (PeftModel Peft, MethodHooks Hooks, RecipeSettings Settings) Build(BenchEntry entry, IPeftMethod method, PreTrainedModel model, int steps)
    {
        var settings = entry.Settings?.Invoke(BenchSettings) ?? BenchSettings;
        var keys = new RecipeKeys(entry.Keys?.Invoke(steps, model.Config.NumHiddenLayers) ?? new(), "methods bench");
        if (entry.Create is { } create) return (create(model), MethodHooks.None, settings);
        var recipe = entry.Recipe is { } name ? PeftMethods.Recipe(name).Recipe : method.Recipes[0];
        var peft = recipe.CreateModel(method, new RecipeContext { Model = model, Keys = keys, Settings = settings, TotalSteps = steps }, null);
        return (peft, recipe.HooksFor(peft, keys, settings), settings);
    }

    static IStepper AdamW(PeftModel p, double lr) => new TorchStepper(optim.AdamW(p.parameters().Where(x => x.requires_grad), lr: lr));

    // LoRA+ (loraplus_lr_ratio): B and 1-D tensors at lr·ratio (two AdamW instances equal one optimizer with two groups).
    static IStepper LoraPlus(PeftModel p, double lr, double ratio)
    {
        var named = p.named_parameters().Where(x => x.parameter.requires_grad).ToList();
        bool IsB((string name, TorchSharp.Modules.Parameter parameter) x) => x.name.Contains("lora_B") || x.parameter.dim() == 1;
        return new TorchStepper(
            optim.AdamW(named.Where(x => !IsB(x)).Select(x => x.parameter), lr: lr),
            optim.AdamW(named.Where(IsB).Select(x => x.parameter), lr: lr * ratio));
    }

    static IStepper Stepper(PeftModel peft, MethodHooks hooks, RecipeSettings settings, double lr) =>
        hooks.CreateOptimizer is { } create ? new MethodStepper(create(new OptimizerArgs(lr, 0, 0.9, 0.999, 1e-8)))
        : settings.LoraPlusLrRatio is { } ratio ? LoraPlus(peft, lr, ratio)
        : AdamW(peft, lr);

    static Tensor Counting(int rows, int length, int vocab, int seed)
    {
        using var g = new Generator((ulong)seed);
        return randint(3, vocab - length, new long[] { rows, 1 }, generator: g) + arange(length).unsqueeze(0);
    }

    // Through the PeftModel's forward; labels get -100 in front of virtual positions, so only real tokens count.
    static Tensor CausalLoss(PeftModel peft, Tensor ids) =>
        Losses.CausalLM(peft.Forward(new ModelInputs { InputIds = ids }).Logits, peft.ExtendLabels(ids));

    [StructLayout(LayoutKind.Sequential)]
    struct Timespec { public long Sec; public long Nsec; }

    [DllImport("libc", EntryPoint = "clock_gettime")]
    static extern int ClockGetTime(int clock, out Timespec t);

    /// <summary>
    /// CPU time of the whole process in ms: CLOCK_PROCESS_CPUTIME_ID (ns resolution; Process.TotalProcessorTime counts
    /// 10 ms ticks on Linux, too coarse for a few-ms generation), else .NET's count.
    /// </summary>
    internal static double CpuMs()
    {
        const int ClockProcessCpuTimeId = 2;
        if (OperatingSystem.IsLinux() && ClockGetTime(ClockProcessCpuTimeId, out var t) == 0) return t.Sec * 1e3 + t.Nsec / 1e6;
        return Process.GetCurrentProcess().TotalProcessorTime.TotalMilliseconds;
    }

    /// <summary>
    /// Times <paramref name="adapted"/> and <paramref name="baseline"/> alternately (so both see the same machine load)
    /// after 2 warm-up rounds: the smallest process CPU ms of <paramref name="repeat"/> runs of each (CPU time, not wall
    /// time: on a shared machine it is the steadier figure).
    /// </summary>
    internal static (double Adapted, double Base) Alternate(Action adapted, Action baseline, int repeat)
    {
        double bestA = double.MaxValue, bestB = double.MaxValue;
        for (int i = 0; i < repeat + 2; i++)
        {
            double t0 = CpuMs();
            baseline();
            double t1 = CpuMs();
            adapted();
            double t2 = CpuMs();
            if (i < 2) continue;
            bestA = Math.Min(bestA, t2 - t1);
            bestB = Math.Min(bestB, t1 - t0);
        }
        return (bestA, bestB);
    }

    /// <summary>Forward of the eval batch and greedy ms per new token, each with the base model's.</summary>
    static (double Forward, double BaseForward, double Token, double BaseToken) Latency(PeftModel peft, PreTrainedModel baseModel, Tensor batch, int[] prompt, GenerationOptions options, int repeat)
    {
        using var _ = no_grad();
        // One torch thread: with two, a waiting thread spins while its partner is descheduled, and on a shared machine
        // that spinning, not the model, dominates the CPU time.
        int threads = get_num_threads();
        set_num_threads(1);
        try { return TimeBoth(peft, baseModel, batch, prompt, options, repeat); }
        finally { set_num_threads(threads); }
    }

    static (double Forward, double BaseForward, double Token, double BaseToken) TimeBoth(PeftModel peft, PreTrainedModel baseModel, Tensor batch, int[] prompt, GenerationOptions options, int repeat)
    {
        var inputs = new ModelInputs { InputIds = batch };
        void Run(ILanguageModel lm) { using var scope = NewDisposeScope(); lm.Forward(inputs); }
        var (forward, baseForward) = Alternate(() => Run(peft), () => Run(baseModel), repeat);
        var (a, b) = (new TextGenerator(peft), new TextGenerator(baseModel));
        var (token, baseToken) = Alternate(() => a.Generate(new[] { prompt }, options), () => b.Generate(new[] { prompt }, options), repeat);
        return (forward, baseForward, token / options.MaxNewTokens, baseToken / options.MaxNewTokens);
    }

    internal static long RssPeakKb()
    {
        foreach (var line in File.ReadLines("/proc/self/status"))
            if (line.StartsWith("VmHWM:")) return long.Parse(line.Split(' ', StringSplitOptions.RemoveEmptyEntries)[1]);
        return 0;
    }

    internal static long RssKb()
    {
        foreach (var line in File.ReadLines("/proc/self/status"))
            if (line.StartsWith("VmRSS:")) return long.Parse(line.Split(' ', StringSplitOptions.RemoveEmptyEntries)[1]);
        return 0;
    }

    // Linux: writing 5 to clear_refs resets the peak RSS (VmHWM) to the current RSS.
    internal static void ResetPeak()
    {
        try { File.WriteAllText("/proc/self/clear_refs", "5"); } catch (IOException) { } catch (UnauthorizedAccessException) { }
    }

    public BenchResult Run(BenchOptions o)
    {
        int hidden = o.GetInt("hidden", 128), layers = o.GetInt("layers", 2), seq = o.GetInt("seq", 32), rows = o.GetInt("rows", 8);
        int steps = o.GetInt("steps", 30), threads = o.GetInt("threads", 2), newTokens = o.GetInt("new", 16), repeat = o.GetInt("repeat", 7), vocab = 512;
        var only = o.Get("only", "");
        var family = o.Get("family", "");
        if (family.Length > 0 && !Families.Contains(family))
            throw new ArgumentException($"--family: expected one of {string.Join(", ", Families)}; got '{family}'");
        var selected = Methods.Where(m => (only.Length == 0 || m.Entry.Answers(only)) && (family.Length == 0 || m.Entry.Family == family)).ToList();
        if (selected.Count == 0)
            throw new ArgumentException($"no method matches --only '{only}' --family '{family}' (methods: {string.Join(", ", Methods.Select(m => $"{m.Entry.Name} [{m.Entry.Family}]"))})");
        PeftSharp.Runtime.ThreadPolicy.Fix(threads);
        var config = AutoModel.ParseConfig(new JsonObject
        {
            ["model_type"] = "llama", ["hidden_size"] = hidden, ["num_hidden_layers"] = layers, ["num_attention_heads"] = Math.Max(1, hidden / 32),
            ["num_key_value_heads"] = Math.Max(1, hidden / 64), ["intermediate_size"] = hidden * 2, ["vocab_size"] = vocab,
            ["tie_word_embeddings"] = false, ["rms_norm_eps"] = 1e-6,
        }, "bench config");
        var train = Counting(rows, seq, vocab, 1);
        var eval = Counting(rows, seq, vocab, 2);
        var prompt = Enumerable.Range(0, seq).Select(i => (int)eval[0, i].item<long>()).ToArray();
        var generation = new GenerationOptions { MaxNewTokens = newTokens, EosTokenIds = Array.Empty<int>(), PadTokenId = 0 };
        var result = new BenchResult
        {
            Columns = new[] { "method", "family", "lr", "trainable", "changed by merge", "max rank ΔW", "ms/step", "peak RSS +MB", "train loss", "eval loss", "forward vs base", "gen CPU ms/token", "gen vs base", "merged" },
        };
        // The reference for the latency column: the same architecture and init without an adapter.
        manual_seed(0);
        using var baseModel = AutoModel.FromConfig(config);
        baseModel.eval();
        foreach (var (method, peftMethod) in selected)
        {
            manual_seed(0);
            using var model = AutoModel.FromConfig(config);
            manual_seed(1);
            var (peft, hooks, settings) = Build(method, peftMethod, model, steps);
            peft.train();
            using var stepper = Stepper(peft, hooks, settings, method.Lr);
            GC.Collect();
            long rss0 = RssKb();
            ResetPeak();
            double trainLoss = 0;
            var sw = Stopwatch.StartNew();
            for (int step = 0; step < steps; step++)
            {
                using var scope = NewDisposeScope();
                foreach (var callback in hooks.Callbacks) callback.OnStepBegin(step);
                var loss = CausalLoss(peft, train);
                trainLoss = loss.item<float>();
                if (hooks.LossTerm is { } term) loss = term(loss);
                if (method.Loss is { } extra) loss = extra(peft, loss);
                loss.backward();
                stepper.Step();
                foreach (var callback in hooks.Callbacks) callback.OnStepEnd(step);
                stepper.ZeroGrad();
            }
            sw.Stop();
            long peak = RssPeakKb() - rss0;
            foreach (var callback in hooks.Callbacks) (callback as IDisposable)?.Dispose();
            peft.eval();
            double evalLoss;
            using (no_grad()) using (var s = NewDisposeScope()) evalLoss = CausalLoss(peft, eval).item<float>();
            var (forward, baseForward, token, baseToken) = Latency(peft, baseModel, eval, prompt, generation, repeat);
            var report = peft.ParameterReport();
            // ParameterAccounting gives no ΔW (rank −1, no weight elements) for what is not folded into a weight.
            var ranked = report.Modules.Where(m => m.DeltaRank >= 0).ToList();
            object changed = report.TargetedWeightParameters == 0 ? "-" : report.MergedChangedParameters;
            object maxRank = ranked.Count == 0 ? "-" : ranked.Max(m => m.DeltaRank);
            result.Add(method.Name, method.Family, method.Lr, report.TrainableParameters, changed, maxRank,
                sw.Elapsed.TotalMilliseconds / steps, peak / 1024.0, trainLoss, evalLoss,
                $"{forward / baseForward:F2}x", token, $"{token / baseToken:F2}x", Merged(peft));
        }
        result.Notes.Add($"Llama hidden={hidden} layers={layers} vocab={vocab}, {rows}x{seq} counting rows, {steps} steps, {threads} threads. LoRA family: attention q/k/v/o adapted; prompt and adapter families: their `peft train` defaults.");
        result.Notes.Add("train loss: the last step's (before its update); eval loss: held-out rows after training; both through the PeftModel's forward over the real token positions only. LoRA-family r=8, alpha=16; VeRA r=128; AdaLoRA init_r=12 -> target_r=8; LoRA+ ratio 16; Delta-LoRA lambda=2 from step steps/4. Prompt family: 20 virtual tokens (LLaMA-Adapter: adapter_len 10 on every layer). Adapters: AdapterHub presets (reduction_factor 16, par_bn 2); AdapterDrop leaves out the first third of the layers (at least one); AdapterFusion: two seq_bn adapters and their fusion trained jointly; MAM prefix 30 + par_bn; UniPELT gated prefix 10 + seq_bn + LoRA r=8; BitFit adds zero biases to the 7 Llama projections.");
        result.Notes.Add("changed by merge / max rank ΔW: ParameterAccounting (merged weights vs the base; Delta-LoRA counts its folded W updates too); '-' where the method has no weight delta (prompt methods, bottleneck slots, prefixes, added biases).");
        result.Notes.Add($"Inference latency, the trained adapter active and unmerged, against the base model (same architecture and init), 1 torch thread, the two timed alternately, min process CPU ms of {repeat} runs after 2 warm-ups: forward vs base = a forward of the {rows}x{seq} eval batch; gen CPU ms/token = greedy generation of {newTokens} tokens after a {seq}-token prompt, 1 row, KV cache, prompt pass included, total / new tokens; gen vs base = that over the base model's (UniPELT's gates span the whole sequence, so it generates without a KV cache). P-Tuning runs its encoder at each prompt pass, as in training (a saved adapter is a table).");
        result.Notes.Add("merged: merge_and_unload leaves the plain base architecture, so 1.00x by construction; '-' = cannot be merged (prompt methods, non-linear bottlenecks, prefixes, gated LoRA, biases the base does not have).");
        return result;
    }

    /// <summary>"1.00x" when merge_and_unload succeeds (the plain base architecture remains), "-" when the method cannot be merged.</summary>
    static string Merged(PeftModel peft)
    {
        try
        {
            peft.MergeAndUnload();
            return "1.00x";
        }
        catch (PeftSharpException) { return "-"; }
    }
}
