using System.Text.Json.Nodes;
using PeftSharp.Models;
using PeftSharp.Tuners;
using PeftSharp.Tuners.AdapterHub;
using static TorchSharp.torch;

namespace PeftSharp.Bench.Benchmarks;

/// <summary>
/// AdapterDrop's inference speed-up on a deeper Llama than the <c>methods</c> table's (built in code): Houlsby
/// adapters (double_seq_bn) in every layer, then dropped from the first third and from all layers, against the base.
/// The per-method latency of the whole adapter family is a column of the <c>methods</c> table; this bench keeps the
/// one thing that needs depth: how much dropping the lower layers' adapters wins back.
/// Then the multi-task case AdapterDrop was made for: a Parallel over --tasks task adapters, with and without the lower
/// layers' adapters dropped, against the base model over as many copies of the batch.
/// Options: --hidden 256 --layers 6 --seq 64 --rows 4 --tasks 8 --repeat 7 --threads 1 (one thread: on a shared machine a second one
/// spins while its partner is descheduled, and the CPU time measures that).
/// </summary>
public sealed class AdapterDropBench : IBenchmark
{
    public string Name => "adapterdrop";
    public string Description => "AdapterDrop: Houlsby adapters in all / two thirds / no layers, and a Parallel over 8 task adapters with the lower layers dropped; forward latency vs the base model";

    public BenchResult Run(BenchOptions o)
    {
        int hidden = o.GetInt("hidden", 256), layers = o.GetInt("layers", 6), seq = o.GetInt("seq", 64), rows = o.GetInt("rows", 4);
        int repeat = o.GetInt("repeat", 7), threads = o.GetInt("threads", 1), tasks = o.GetInt("tasks", 8);
        PeftSharp.Runtime.ThreadPolicy.Fix(threads);
        var config = AutoModel.ParseConfig(new JsonObject
        {
            ["model_type"] = "llama", ["hidden_size"] = hidden, ["num_hidden_layers"] = layers, ["num_attention_heads"] = hidden / 64,
            ["num_key_value_heads"] = hidden / 64, ["intermediate_size"] = hidden * 8 / 3 / 64 * 64, ["vocab_size"] = 4096,
            ["tie_word_embeddings"] = false, ["rms_norm_eps"] = 1e-6,
        }, "bench config");
        var inputs = new ModelInputs { InputIds = randint(0, 4096, new long[] { rows, seq }) };
        var result = new BenchResult { Columns = new[] { "case", "min CPU ms", "base min CPU ms", "vs base" } };
        using var _ = no_grad();
        manual_seed(0);
        using var baseModel = AutoModel.FromConfig(config);
        baseModel.eval();
        manual_seed(0);
        var houlsby = BenchAdapters.Create(AutoModel.FromConfig(config), "adapter", new RecipeSettings { Source = "adapterdrop bench" }, new() { ["adapter_config"] = "double_seq_bn" });
        houlsby.eval();
        void Forward(ILanguageModel lm) { using var scope = NewDisposeScope(); lm.Forward(inputs); }
        void Measure(string label)
        {
            // Each case alternates with the base model, so both see the same machine load.
            var (adapted, baseline) = MethodsBench.Alternate(() => Forward(houlsby), () => Forward(baseModel), repeat);
            result.Add(label, adapted, baseline, $"{adapted / baseline:F2}x");
        }
        // The first forwards of a process pay one-time costs (JIT, allocator) that the 2 warm-up rounds do not cover.
        for (int i = 0; i < 3; i++) { Forward(baseModel); Forward(houlsby); }
        Measure($"double_seq_bn (Houlsby, rf 16) in all {layers} layers");
        HubAdapters.DropLayers(houlsby, Enumerable.Range(0, layers / 3));
        Measure($"AdapterDrop: first {layers / 3} of {layers} layers dropped");
        HubAdapters.DropLayers(houlsby, Enumerable.Range(0, layers));
        Measure("AdapterDrop: all layers dropped");
        houlsby.Dispose();

        // Multi-task inference (the AdapterDrop paper's setting): one Parallel over N task adapters. The batch is
        // copied at the first layer with adapters, so the layers whose adapters are dropped run once for all tasks.
        manual_seed(0);
        var names = Enumerable.Range(0, tasks).Select(i => $"task{i}").ToArray();
        var multiModel = AutoModel.FromConfig(config);
        var seqBn = BenchAdapters.Config(multiModel, "adapter", new RecipeSettings { Source = "adapterdrop bench" });
        var multi = PeftModel.Create(multiModel, seqBn, names[0]);
        foreach (var n in names.Skip(1)) multi.AddAdapter(n, seqBn);
        multi.eval();
        AdapterComposition.Apply(multi, $"Parallel[{string.Join(",", names)}]", null);
        // The base model over N copies of the batch: what running the tasks one after another costs without adapters.
        var copies = new ModelInputs { InputIds = inputs.InputIds!.repeat(tasks, 1) };
        void ForwardCopies(ILanguageModel lm) { using var scope = NewDisposeScope(); lm.Forward(copies); }
        double? allLayers = null;
        void MeasureTasks(string label)
        {
            var (adapted, baseline) = MethodsBench.Alternate(() => Forward(multi), () => ForwardCopies(baseModel), repeat);
            allLayers ??= adapted;
            result.Add(label, adapted, baseline, $"{adapted / baseline:F2}x");
        }
        for (int i = 0; i < 2; i++) { Forward(multi); ForwardCopies(baseModel); }
        MeasureTasks($"Parallel over {tasks} seq_bn task adapters, all {layers} layers");
        foreach (var dropped in new[] { layers / 3, layers / 2 })
        {
            HubAdapters.DropLayers(multi, Enumerable.Range(0, dropped));
            MeasureTasks($"Parallel over {tasks} tasks, first {dropped} of {layers} layers dropped");
        }
        multi.Dispose();
        var rowsAll = result.Rows.Count;
        result.Notes.Add($"Llama hidden {hidden}, {layers} layers, batch {rows}x{seq} tokens, float32, {threads} torch thread(s), no grad; min process CPU ms of {repeat} forwards after 2 warm-ups, each case alternating with the base model (same init, no adapters).");
        result.Notes.Add("Single task: AdapterDrop skips the adapters of dropped layers; the speed-up is the adapters' overhead won back.");
        result.Notes.Add($"Multi-task: the base column is the base model over {tasks} copies of the batch; the Parallel copies start at the first layer with adapters, so dropping the lower layers' adapters runs those layers once for all {tasks} tasks. Speed-up over all layers: " +
            string.Join(", ", result.Rows.Skip(rowsAll - 2).Select(r => $"{r[0]}: {allLayers / (double)r[1]:F2}x")) + ".");
        return result;
    }
}
