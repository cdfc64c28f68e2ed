using System.Diagnostics;
using System.Text.Json.Nodes;
using PeftSharp.Models;
using PeftSharp.Runtime;
using TorchSharp;
using static TorchSharp.torch;

namespace PeftSharp.Bench.Benchmarks;

/// <summary>
/// Forward tokens/s of randomly initialized Llama models: the fixture size (llama-tiny) and a ~30M-parameter
/// config, fp32 and bf16, no grad. Options: --threads N (2), --reps N (5), --warmup N (2), --seq N (256),
/// --models tiny,30m, --dtypes fp32,bf16, --batches 1,4.
/// </summary>
public sealed class ForwardBench : IBenchmark
{
    public string Name => "forward";
    public string Description => "Llama forward tokens/s (fixture size and ~30M params; fp32 and bf16)";

    static readonly Dictionary<string, JsonObject> Configs = new()
    {
        ["tiny"] = Llama(hidden: 64, layers: 2, heads: 4, kvHeads: 2, intermediate: 128, vocab: 320, headDim: 16),
        ["30m"] = Llama(hidden: 512, layers: 8, heads: 8, kvHeads: 8, intermediate: 1376, vocab: 8192),
    };

    static JsonObject Llama(int hidden, int layers, int heads, int kvHeads, int intermediate, int vocab, int? headDim = null)
    {
        var c = new JsonObject
        {
            ["model_type"] = "llama", ["hidden_size"] = hidden, ["num_hidden_layers"] = layers,
            ["num_attention_heads"] = heads, ["num_key_value_heads"] = kvHeads, ["intermediate_size"] = intermediate,
            ["vocab_size"] = vocab, ["max_position_embeddings"] = 4096, ["tie_word_embeddings"] = false,
        };
        if (headDim is int d) c["head_dim"] = d;
        return c;
    }

    public BenchResult Run(BenchOptions options)
    {
        int threads = options.GetInt("threads", 2), reps = options.GetInt("reps", 5), warmup = options.GetInt("warmup", 2);
        int seq = options.GetInt("seq", 256);
        var models = options.Get("models", "tiny,30m").Split(',');
        var dtypes = options.Get("dtypes", "fp32,bf16").Split(',').Select(d => d == "bf16" ? ScalarType.BFloat16 : ScalarType.Float32);
        var batches = options.Get("batches", "1,4").Split(',').Select(int.Parse).ToArray();

        TorchRuntime.EnsureInitialized();
        PeftSharp.Runtime.ThreadPolicy.Fix(threads);
        var result = new BenchResult { Columns = new[] { "model", "params", "dtype", "batch", "seq", "median ms", "min ms", "tokens/s" } };
        foreach (var name in models)
        foreach (var dtype in dtypes)
        {
            manual_seed(0);
            using var model = AutoModel.FromConfig(AutoModel.ParseConfig(Configs[name], $"forward bench config '{name}'"), CPU, dtype);
            long parameters = model.ParameterCount();
            foreach (int batch in batches)
            {
                using var ids = randint(0, model.Config.VocabSize, new long[] { batch, seq });
                var times = new List<double>();
                var collector = new PeriodicCollector();
                for (int i = 0; i < warmup + reps; i++)
                {
                    using var scope = NewDisposeScope();
                    using var _ = no_grad();
                    var sw = Stopwatch.StartNew();
                    model.Forward(ids);
                    sw.Stop();
                    if (i >= warmup) times.Add(sw.Elapsed.TotalMilliseconds);
                    collector.Tick();
                }
                TorchRuntime.TrimMemory();
                times.Sort();
                double median = times[times.Count / 2];
                result.Add(name, $"{parameters / 1e6:F2}M", dtype == ScalarType.BFloat16 ? "bf16" : "fp32", batch, seq, median, times[0], batch * seq / (median / 1000));
            }
        }
        result.Notes.Add($"torch threads {threads}, {warmup} warmup + {reps} timed reps each, median; random init, no attention mask (causal only), no grad.");
        return result;
    }
}
