using System.Diagnostics;
using System.Text.Json.Nodes;
using PeftSharp.Models;
using PeftSharp.Quantization;
using TorchSharp;
using static TorchSharp.torch;

namespace PeftSharp.Bench.Benchmarks;

/// <summary>
/// 4-bit dequantization speed (GB/s of output for a 4096x4096 NF4 weight, fp32 and bf16) and the storage cost of
/// 4-bit base weights in bits per parameter on the ~30M Llama bench model, with and without double quantization.
/// Options: --size 4096 --iters 30 --blocksize 64.
/// </summary>
public sealed class DequantBench : IBenchmark
{
    public string Name => "dequant";
    public string Description => "4-bit NF4 dequantization GB/s (fp32/bf16 output) and bits per parameter of stored 4-bit weights";

    public BenchResult Run(BenchOptions options)
    {
        int size = options.GetInt("size", 4096), iters = options.GetInt("iters", 30), blocksize = options.GetInt("blocksize", 64);
        var result = new BenchResult { Columns = new[] { "case", "value", "unit", "detail" } };
        manual_seed(0);

        using (var w = randn(size, size) * 0.02f)
        {
            foreach (bool dq in new[] { false, true })
            {
                var (packed, state) = Bnb4bit.Quantize(w, QuantType.NF4, blocksize, dq);
                using var _p = packed; using var _s = state;
                foreach (var dtype in new[] { ScalarType.Float32, ScalarType.BFloat16 })
                {
                    using var output = empty(new long[] { size, size }, dtype);
                    var (min, median) = Time(iters, () => Bnb4bit.DequantizeInto(packed, state, output));
                    double bytes = (double)size * size * (dtype == ScalarType.Float32 ? 4 : 2);
                    var label = $"C# loop, {(dtype == ScalarType.Float32 ? "fp32" : "bf16")} out{(dq ? ", DQ" : "")}";
                    result.Add(label, bytes / min / 1e9, "GB/s", $"best {min * 1e3:F1} ms, median {median * 1e3:F1} ms, {size}x{size}, {Environment.ProcessorCount} threads");
                }
                if (!dq)
                {
                    var (min, median) = Time(Math.Max(3, iters / 5), () => { using var y = Bnb4bit.DequantizeWithTensorOps(packed, state); });
                    result.Add("tensor ops (GPU path), fp32 out", (double)size * size * 4 / min / 1e9, "GB/s", $"best {min * 1e3:F1} ms, median {median * 1e3:F1} ms (allocates its output)");
                }
            }
        }

        // Bits per parameter on the bench Llama (hidden 512, 8 layers, 8 heads, intermediate 1376, vocab 8192).
        foreach (bool dq in new[] { true, false })
        {
            using var model = BenchLlama();
            long allBytesBefore = model.state_dict().Values.Sum(t => t.numel() * t.element_size());
            QuantizedModelLoader.Quantize(model, new BitsAndBytesConfig { LoadIn4bit = true, Bnb4bitQuantType = "nf4", Bnb4bitUseDoubleQuant = dq, Blocksize = blocksize });
            var layers = QuantizedModelLoader.QuantizedLayers(model).ToList();
            long parameters = layers.Sum(l => l.Layer.QuantState.NumElements);
            long codes = layers.Sum(l => l.Layer.PackedWeight.numel());
            long scales = layers.Sum(l => Bytes(l.Layer.QuantState.Absmax) + (l.Layer.QuantState.NestedAbsmax is { } n ? Bytes(n) : 0));
            long metadata = layers.Sum(l => l.Layer.QuantState.StateDictEntries().Sum(e => Bytes(e.Tensor))) - scales;
            long allBytes = model.state_dict().Values.Sum(t => t.numel() * t.element_size());
            string tag = dq ? "NF4 + DQ" : "NF4";
            result.Add($"bits/param, {tag}, all stored", 8.0 * (codes + scales + metadata) / parameters, "bits",
                $"{layers.Count} linears, {parameters:N0} params: codes {codes:N0} B + absmax{(dq ? "/nested_absmax" : "")} {scales:N0} B + quant_map{(dq ? "/nested_quant_map" : "")}/JSON {metadata:N0} B");
            result.Add($"bits/param, {tag}, codes+scales", 8.0 * (codes + scales) / parameters, "bits", "without the per-tensor code books and JSON");
            result.Add($"model size, {tag}", allBytes / 1048576.0, "MiB", $"fp32 model {allBytesBefore / 1048576.0:F1} MiB (embed_tokens, lm_head, norms stay fp32)");
        }
        result.Notes.Add("GB/s counts bytes of dequantized output written; the C# loop writes into a preallocated tensor.");
        result.Notes.Add("bits/param: stored bytes of the quantized linear layers (q,k,v,o,gate,up,down; lm_head and embeddings excluded) per quantized parameter.");
        return result;
    }

    static long Bytes(Tensor t) => t.numel() * t.element_size();

    static PreTrainedModel BenchLlama()
    {
        var config = AutoModel.ParseConfig(new JsonObject
        {
            ["model_type"] = "llama", ["hidden_size"] = 512, ["num_hidden_layers"] = 8, ["num_attention_heads"] = 8,
            ["num_key_value_heads"] = 8, ["intermediate_size"] = 1376, ["vocab_size"] = 8192, ["tie_word_embeddings"] = false,
            ["max_position_embeddings"] = 512, ["rms_norm_eps"] = 1e-6, ["initializer_range"] = 0.02,
        }, "bench llama");
        return AutoModel.FromConfig(config);
    }

    static (double Min, double Median) Time(int iters, Action a)
    {
        for (int i = 0; i < 3; i++) a();
        var times = new List<double>();
        for (int i = 0; i < iters; i++)
        {
            var sw = Stopwatch.StartNew();
            a();
            times.Add(sw.Elapsed.TotalSeconds);
        }
        times.Sort();
        return (times[0], times[times.Count / 2]);
    }
}
