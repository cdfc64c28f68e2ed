using System.Text.Json.Nodes;
using PeftSharp.Models;
using PeftSharp.Tuners;
using PeftSharp.Tuners.AdapterHub;
using PeftSharp.Tuners.Bottleneck;
using static TorchSharp.torch;

namespace PeftSharp.Bench.Benchmarks;

/// <summary>
/// AdapterDrop's inference speed-up on a deeper Llama than the <c>methods</c> table's (built in code): Houlsby
/// adapters (double_seq_bn) in every layer, then dropped from the first third and from all layers, against the base.
/// The per-method latency of the whole adapter family is a column of the <c>methods</c> table; this bench keeps the
/// one thing that needs depth: how much dropping the lower layers' adapters wins back.
/// Options: --hidden 256 --layers 6 --seq 64 --rows 4 --repeat 5 --threads 2.
/// </summary>
public sealed class AdapterDropBench : IBenchmark
{
    public string Name => "adapterdrop";
    public string Description => "AdapterDrop: Houlsby adapters in all / two thirds / no layers of a 6-layer Llama, forward latency vs the base model";

    public BenchResult Run(BenchOptions o)
    {
        int hidden = o.GetInt("hidden", 256), layers = o.GetInt("layers", 6), seq = o.GetInt("seq", 64), rows = o.GetInt("rows", 4);
        int repeat = o.GetInt("repeat", 5), threads = o.GetInt("threads", 2);
        set_num_threads(threads);
        var config = AutoModel.ParseConfig(new JsonObject
        {
            ["model_type"] = "llama", ["hidden_size"] = hidden, ["num_hidden_layers"] = layers, ["num_attention_heads"] = hidden / 64,
            ["num_key_value_heads"] = hidden / 64, ["intermediate_size"] = hidden * 8 / 3 / 64 * 64, ["vocab_size"] = 4096,
            ["tie_word_embeddings"] = false, ["rms_norm_eps"] = 1e-6,
        }, "bench config");
        var inputs = new ModelInputs { InputIds = randint(0, 4096, new long[] { rows, seq }) };
        var result = new BenchResult { Columns = new[] { "case", "median ms", "min ms", "min CPU ms", "CPU overhead vs base" } };
        double baseCpu = 0;
        void Measure(string label, PeftModel peft)
        {
            var (median, min, cpu) = LoraForwardBench.Time(() => peft.Forward(inputs).Logits.Dispose(), repeat);
            // CPU time, not wall time: on a shared machine it is the steadier figure.
            if (baseCpu == 0) baseCpu = cpu;
            result.Add(label, median, min, cpu, $"{(cpu / baseCpu - 1) * 100:+0.0;-0.0}%");
        }
        using var _ = no_grad();
        manual_seed(0);
        var houlsby = PeftModel.Create(AutoModel.FromConfig(config), AdapterHubConfig.Of(BottleneckConfig.DoubleSeqBn()));
        houlsby.eval();
        using (houlsby.DisableAdapters()) Measure("base (adapters disabled)", houlsby);
        Measure($"double_seq_bn (Houlsby, rf 16) in all {layers} layers", houlsby);
        HubAdapters.DropLayers(houlsby, Enumerable.Range(0, layers / 3));
        Measure($"AdapterDrop: first {layers / 3} of {layers} layers dropped", houlsby);
        HubAdapters.DropLayers(houlsby, Enumerable.Range(0, layers));
        Measure("AdapterDrop: all layers dropped", houlsby);
        result.Notes.Add($"Llama hidden {hidden}, {layers} layers, batch {rows}x{seq} tokens, float32, {threads} threads, no grad; median/min of {repeat} after 2 warm-ups.");
        result.Notes.Add("AdapterDrop skips the adapters of dropped layers at inference; the speed-up is the overhead won back, bounded by what the adapters cost.");
        return result;
    }
}
