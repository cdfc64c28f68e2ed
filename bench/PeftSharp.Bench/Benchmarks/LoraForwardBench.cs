using System.Diagnostics;
using System.Text.Json.Nodes;
using PeftSharp.Models;
using PeftSharp.Runtime;
using PeftSharp.Tuners;
using TorchSharp;
using static TorchSharp.torch;

namespace PeftSharp.Bench.Benchmarks;

/// <summary>
/// Forward latency of a small Llama (built in code) without adapters, with an unmerged LoRA, merged, and
/// mixed-adapter batches (1, 8, 32 distinct adapters in 32 rows) in one pass versus a loop over the adapters.
/// Options: --hidden 512 --layers 4 --seq 32 --rows 32 --r 16 --repeat 5 --threads 2.
/// </summary>
public sealed class LoraForwardBench : IBenchmark
{
    public string Name => "lora-forward";
    public string Description => "LoRA forward latency: base vs unmerged vs merged, mixed-adapter batches vs a loop over adapters";

    public BenchResult Run(BenchOptions o)
    {
        int hidden = o.GetInt("hidden", 512), layers = o.GetInt("layers", 4), seq = o.GetInt("seq", 32), rows = o.GetInt("rows", 32);
        int r = o.GetInt("r", 16), repeat = o.GetInt("repeat", 5), threads = o.GetInt("threads", 2);
        PeftSharp.Runtime.ThreadPolicy.Fix(threads);
        torch.manual_seed(0);
        var config = AutoModel.ParseConfig(new JsonObject
        {
            ["model_type"] = "llama", ["hidden_size"] = hidden, ["num_hidden_layers"] = layers, ["num_attention_heads"] = hidden / 64,
            ["num_key_value_heads"] = hidden / 64, ["intermediate_size"] = hidden * 8 / 3 / 64 * 64, ["vocab_size"] = 4096,
            ["tie_word_embeddings"] = false, ["rms_norm_eps"] = 1e-6,
        }, "bench config");
        var model = AutoModel.FromConfig(config);
        var lora = BenchAdapters.Config(model, "lora", BenchAdapters.Lora(r, "q_proj,k_proj,v_proj,o_proj"));
        var peft = PeftModel.Create(model, lora, "a0");
        const int adapters = 32;
        for (int i = 1; i < adapters; i++) peft.AddAdapter($"a{i}", lora);
        BenchAdapters.RandomizeUp(peft, 0.02);
        peft.SetAdapter("a0");
        peft.eval();

        var ids = randint(0, 4096, new long[] { rows, seq });
        var inputs = new ModelInputs { InputIds = ids };
        var result = new BenchResult { Columns = new[] { "case", "adapters in batch", "median ms", "min ms", "min CPU ms", "tokens/s (min)" } };
        void Add(string label, int distinct, Action forward)
        {
            var (median, min, cpu) = Time(forward, repeat);
            result.Add(label, distinct, median, min, cpu, rows * seq / (min / 1000));
        }

        using var _ = no_grad();
        using (peft.DisableAdapters()) Add("base (adapters disabled)", 0, () => peft.Forward(inputs).Logits.Dispose());
        Add("LoRA unmerged", 1, () => peft.Forward(inputs).Logits.Dispose());
        peft.Merge();
        Add("LoRA merged", 1, () => peft.Forward(inputs).Logits.Dispose());
        peft.Unmerge();

        foreach (int distinct in new[] { 1, 8, 32 })
        {
            var perRow = Enumerable.Range(0, rows).Select(i => $"a{i % distinct}").ToArray();
            Add("mixed batch, one pass", distinct, () => peft.Forward(inputs, perRow).Logits.Dispose());
            Add("loop over adapters", distinct, () => LoopOverAdapters(peft, ids, perRow).Dispose());
        }
        peft.SetAdapter("a0");
        result.Notes.Add($"Llama hidden {hidden}, {layers} layers, vocab 4096, batch {rows}x{seq} tokens, LoRA r={r} on q/k/v/o, float32, {threads} threads; median/min of {repeat} after 2 warm-ups; CPU ms = process CPU time (all threads).");
        result.Notes.Add("loop over adapters = for each distinct adapter: set_adapter, forward its rows, scatter back (what a server without mixed batches does).");
        return result;
    }

    static Tensor LoopOverAdapters(PeftModel peft, Tensor ids, string[] perRow)
    {
        using var scope = NewDisposeScope();
        Tensor? logits = null;
        foreach (var name in perRow.Distinct())
        {
            var idx = tensor(perRow.Select((n, i) => (n, i)).Where(p => p.n == name).Select(p => (long)p.i).ToArray());
            peft.SetAdapter(name);
            var y = peft.Forward(new ModelInputs { InputIds = ids.index_select(0, idx) }).Logits;
            logits ??= zeros(new[] { ids.shape[0] }.Concat(y.shape.Skip(1)).ToArray());
            logits = logits.index_copy(0, idx, y);
        }
        return logits!.MoveToOuterDisposeScope();
    }

    // Wall time plus process CPU time: on a shared machine CPU time is the steadier figure.
    internal static (double Median, double Min, double MinCpu) Time(Action f, int repeat)
    {
        for (int i = 0; i < 2; i++) f();
        var times = new List<double>();
        var cpu = new List<double>();
        var process = Process.GetCurrentProcess();
        for (int i = 0; i < repeat; i++)
        {
            process.Refresh();
            var cpu0 = process.TotalProcessorTime;
            var sw = Stopwatch.StartNew();
            f();
            times.Add(sw.Elapsed.TotalMilliseconds);
            process.Refresh();
            cpu.Add((process.TotalProcessorTime - cpu0).TotalMilliseconds);
            // Outside the timed region, so no run pays for the previous runs' undisposed objects (PeriodicCollector).
            TorchRuntime.CollectUndisposed();
        }
        times.Sort();
        return (times[times.Count / 2], times[0], cpu.Min());
    }
}
