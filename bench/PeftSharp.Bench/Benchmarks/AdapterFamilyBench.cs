using System.Text.Json.Nodes;
using PeftSharp.Models;
using PeftSharp.Tuners;
using PeftSharp.Tuners.AdapterHub;
using PeftSharp.Tuners.BitFit;
using PeftSharp.Tuners.Bottleneck;
using TorchSharp;
using static TorchSharp.torch;

namespace PeftSharp.Bench.Benchmarks;

/// <summary>
/// Inference latency overhead of the adapter family on one small Llama (built in code): bottleneck adapters
/// (Pfeiffer, Houlsby, parallel), AdapterFusion over two, AdapterHub prefix tuning, MAM, UniPELT, AdapterHub LoRA
/// unmerged/merged, BitFit, and AdapterDrop (adapters removed from the first third / all layers).
/// Options: --hidden 256 --layers 6 --seq 64 --rows 4 --repeat 5 --threads 2.
/// </summary>
public sealed class AdapterFamilyBench : IBenchmark
{
    public string Name => "adapters";
    public string Description => "Adapter family inference latency vs the base model (bottleneck, fusion, prefix, MAM, UniPELT, LoRA, BitFit, AdapterDrop)";

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
        var result = new BenchResult { Columns = new[] { "method", "median ms", "min ms", "min CPU ms", "CPU overhead vs base" } };
        double baseCpu = 0;
        void Measure(string label, PeftModel peft)
        {
            peft.eval();
            var (median, min, cpu) = LoraForwardBench.Time(() => peft.Forward(inputs).Logits.Dispose(), repeat);
            // CPU time, not wall time: on a shared machine it is the steadier figure.
            if (baseCpu == 0) baseCpu = cpu;
            result.Add(label, median, min, cpu, $"{(cpu / baseCpu - 1) * 100:+0.0;-0.0}%");
        }
        PeftModel Make(PeftConfig c)
        {
            manual_seed(0);
            return PeftModel.Create(AutoModel.FromConfig(config), c);
        }
        var prefix = new HubPrefixConfig { PrefixLength = 30, BottleneckSize = 512 };

        using var _ = no_grad();
        var seqBn = Make(AdapterHubConfig.Of(BottleneckConfig.SeqBn()));
        using (seqBn.DisableAdapters()) Measure("base (adapters disabled)", seqBn);
        Measure("seq_bn (Pfeiffer, rf 16)", seqBn);
        var houlsby = Make(AdapterHubConfig.Of(BottleneckConfig.DoubleSeqBn()));
        Measure("double_seq_bn (Houlsby, rf 16)", houlsby);
        HubAdapters.DropLayers(houlsby, Enumerable.Range(0, layers / 3));
        Measure($"double_seq_bn, AdapterDrop first {layers / 3} of {layers} layers", houlsby);
        HubAdapters.DropLayers(houlsby, Enumerable.Range(0, layers));
        Measure("double_seq_bn, AdapterDrop all layers", houlsby);
        Measure("par_bn (rf 2, scaling 4)", Make(AdapterHubConfig.Of(BottleneckConfig.ParBn())));
        var fuse = Make(AdapterHubConfig.Of(BottleneckConfig.SeqBn()));
        fuse.AddAdapter("b", AdapterHubConfig.Of(BottleneckConfig.SeqBn()));
        HubAdapters.AddFusion(fuse, new[] { "default", "b" });
        HubAdapters.Activate(fuse, Composition.Fuse("default", "b"));
        Measure("Fuse(2 x seq_bn)", fuse);
        Measure("prefix_tuning (AdapterHub, 30 tokens)", Make(AdapterHubConfig.Of(prefix)));
        Measure("MAM (prefix + par_bn)", Make(AdapterHubConfig.Of(prefix, BottleneckConfig.ParBn())));
        Measure("UniPELT (gated prefix + seq_bn + LoRA)", Make(AdapterHubConfig.Of(prefix with { UseGating = true }, BottleneckConfig.SeqBn() with { UseGating = true }, new HubLoraConfig { R = 8, Alpha = 8, UseGating = true })));
        var lora = Make(AdapterHubConfig.Of(new HubLoraConfig { R = 8, Alpha = 16 }));
        Measure("LoRA (AdapterHub, q/v, r 8) unmerged", lora);
        lora.Merge();
        Measure("LoRA merged", lora);
        var bitfit = Make(new BitFitConfig());
        Measure("BitFit (added biases on 7 projections)", bitfit);
        result.Notes.Add($"Llama hidden {hidden}, {layers} layers, batch {rows}x{seq} tokens, float32, {threads} threads, no grad; median/min of {repeat} after 2 warm-ups.");
        result.Notes.Add("Serial adapters add their bottleneck per block; LoRA merges away; AdapterDrop skips the adapters of dropped layers at inference.");
        return result;
    }
}
