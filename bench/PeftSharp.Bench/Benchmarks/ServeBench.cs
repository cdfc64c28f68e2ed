using System.Diagnostics;
using System.Net.Http.Json;
using System.Text.Json.Nodes;
using PeftSharp.Inference.Serving;
using PeftSharp.Models;
using PeftSharp.Server;
using PeftSharp.Tuners;
using TorchSharp;
using static TorchSharp.torch;

namespace PeftSharp.Bench.Benchmarks;

/// <summary>
/// Multi-adapter serving under load: <c>peft serve</c>'s engine and HTTP server on loopback, concurrent clients
/// sending greedy /v1/completions spread over 1, 8 and 32 LoRA adapters; the same load on a model with one
/// adapter merged in, and requests served one at a time. Reports generated tokens/s and request latency p50/p99.
/// Cases run interleaved for --rounds rounds and each keeps its best round, which damps a shared machine's noise;
/// the process's CPU time per generated token (best round) is reported too, as it drifts less than wall time when
/// other work shares the cores.
/// Options: --hidden 512 --layers 4 --r 16 --clients 32 --requests 96 --prompt 32 --tokens 32 --threads 2 --rounds 2.
/// </summary>
public sealed class ServeBench : IBenchmark
{
    public string Name => "serve";
    public string Description => "OpenAI server under load: tokens/s and p50/p99 latency across 1/8/32 adapters vs merged vs one at a time";

    public BenchResult Run(BenchOptions o)
    {
        int hidden = o.GetInt("hidden", 512), layers = o.GetInt("layers", 4), r = o.GetInt("r", 16), threads = o.GetInt("threads", 2);
        int clients = o.GetInt("clients", 32), requests = o.GetInt("requests", 96), promptLen = o.GetInt("prompt", 32), tokens = o.GetInt("tokens", 32);
        int rounds = o.GetInt("rounds", 2);
        PeftSharp.Runtime.ThreadPolicy.Fix(threads);
        torch.manual_seed(0);
        var root = Path.Combine(Path.GetTempPath(), "peftsharp-serve-bench-" + Guid.NewGuid().ToString("N"));
        try
        {
            var (baseDir, mergedDir, adapterDirs) = MakeModels(root, hidden, layers, r, 32);
            var rng = new Random(0);
            var prompts = Enumerable.Range(0, requests).Select(_ => Enumerable.Range(0, promptLen).Select(_ => rng.Next(3, 4096)).ToArray()).ToArray();
            var result = new BenchResult { Columns = new[] { "case", "adapters", "clients", "tokens/s", "p50 ms", "p99 ms", "vs 1 adapter", "CPU ms/token", "CPU vs 1 adapter" } };
            var cases = new (string Label, string Dir, int Adapters, int Clients, int MaxBatch)[]
            {
                ("LoRA, 1 adapter", baseDir, 1, clients, clients),
                ("LoRA, 8 adapters", baseDir, 8, clients, clients),
                ("LoRA, 32 adapters", baseDir, 32, clients, clients),
                ("merged adapter (base path)", mergedDir, 0, clients, clients),
                ("one at a time (batch 1)", baseDir, 1, clients, 1),
            };
            var best = new (double Tps, double P50, double P99, double CpuMs)[cases.Length];
            var cpu = Enumerable.Repeat(double.MaxValue, cases.Length).ToArray();
            // Untimed pass first: JIT, torch kernels and the allocator warm up before any case is measured.
            Load(baseDir, adapterDirs.Take(8).ToList(), 8, clients, clients, prompts.Take(clients).ToArray(), tokens).GetAwaiter().GetResult();
            for (int round = 0; round < rounds; round++)
                for (int c = 0; c < cases.Length; c++)
                {
                    var k = cases[c];
                    var m = Load(k.Dir, adapterDirs.Take(k.Adapters).ToList(), k.Adapters, k.Clients, k.MaxBatch, prompts, tokens).GetAwaiter().GetResult();
                    if (m.TokensPerSecond > best[c].Tps) best[c] = m;
                    cpu[c] = Math.Min(cpu[c], m.CpuMs);
                }
            for (int c = 0; c < cases.Length; c++)
                result.Add(cases[c].Label, cases[c].Adapters, cases[c].Clients, best[c].Tps, best[c].P50, best[c].P99, $"{best[c].Tps / best[0].Tps:F2}x",
                    cpu[c], $"{cpu[0] / cpu[c]:F2}x");
            result.Notes.Add($"Llama hidden {hidden}, {layers} layers, vocab 4096; LoRA r={r} on q/k/v/o; {requests} requests of {promptLen} prompt tokens, {tokens} greedy tokens each (ignore_eos), {clients} concurrent HTTP clients on loopback; best of {rounds} interleaved rounds; float32, {threads} torch threads, {Environment.ProcessorCount} cores.");
            result.Notes.Add("tokens/s = generated tokens / wall time of the whole load; latency = request sent to full response; requests spread round-robin over the adapters.");
            return result;
        }
        finally
        {
            try { Directory.Delete(root, true); } catch (IOException) { }
        }
    }

    static (string Base, string Merged, List<string> Adapters) MakeModels(string root, int hidden, int layers, int r, int count)
    {
        var config = AutoModel.ParseConfig(new JsonObject
        {
            ["model_type"] = "llama", ["architectures"] = new JsonArray("LlamaForCausalLM"), ["hidden_size"] = hidden, ["num_hidden_layers"] = layers,
            ["num_attention_heads"] = hidden / 64, ["num_key_value_heads"] = hidden / 64, ["intermediate_size"] = hidden * 8 / 3 / 64 * 64,
            ["vocab_size"] = 4096, ["tie_word_embeddings"] = false, ["rms_norm_eps"] = 1e-6, ["max_position_embeddings"] = 2048,
            ["eos_token_id"] = 2, ["pad_token_id"] = 0,
        }, "bench config");
        var baseDir = Path.Combine(root, "base");
        using (var model = AutoModel.FromConfig(config)) AutoModel.SavePretrained(model, baseDir);
        var adapters = new List<string>();
        using (var model = AutoModel.FromPretrained(baseDir))
        {
            var lora = BenchAdapters.Config(model, "lora", BenchAdapters.Lora(r, "q_proj,k_proj,v_proj,o_proj"));
            var peft = PeftModel.Create(model, lora, "a0");
            for (int i = 1; i < count; i++) peft.AddAdapter($"a{i}", lora);
            BenchAdapters.RandomizeUp(peft, 0.02);
            for (int i = 0; i < count; i++)
            {
                var dir = Path.Combine(root, $"a{i}");
                peft.SaveAdapterTo(dir, $"a{i}");
                adapters.Add(dir);
            }
        }
        var mergedDir = Path.Combine(root, "merged");
        using (var model = AutoModel.FromPretrained(baseDir))
        {
            var peft = PeftModel.FromPretrained(model, adapters[0], "a0");
            peft.SaveMerged(mergedDir);
        }
        return (baseDir, mergedDir, adapters);
    }

    static async Task<(double TokensPerSecond, double P50, double P99, double CpuMs)> Load(string modelDir, List<string> adapterDirs, int adapters, int concurrency, int maxBatch, int[][] prompts, int tokens)
    {
        var options = new ServingOptions { MaxBatchSize = maxBatch, MaxLoras = Math.Max(1, adapters), MaxQueue = prompts.Length, ModelName = "base" };
        using var engine = ServingEngine.FromFolder(modelDir, options, adapterDirs.Select((d, i) => ($"a{i}", d)));
        await using var server = await OpenAiServer.StartAsync(engine, "127.0.0.1", 0);
        using var http = new HttpClient { BaseAddress = server.Address, Timeout = TimeSpan.FromMinutes(10) };
        async Task<double> Send(int i)
        {
            var body = new JsonObject
            {
                ["model"] = adapters == 0 ? "base" : $"a{i % adapters}", ["prompt"] = new JsonArray(prompts[i].Select(t => (JsonNode)t).ToArray()),
                ["max_tokens"] = tokens, ["temperature"] = 0, ["ignore_eos"] = true,
            };
            var sw = Stopwatch.StartNew();
            using var response = await http.PostAsync("/v1/completions", JsonContent.Create(body));
            var text = await response.Content.ReadAsStringAsync();
            if (!response.IsSuccessStatusCode) throw new InvalidOperationException($"request {i} got {(int)response.StatusCode}: {text}");
            return sw.Elapsed.TotalMilliseconds;
        }
        // Warm-up: one request per adapter path.
        await Task.WhenAll(Enumerable.Range(0, Math.Min(prompts.Length, Math.Max(1, Math.Min(adapters, concurrency)))).Select(Send));
        var latencies = new List<double>();
        int next = -1;
        var cpu0 = Process.GetCurrentProcess().TotalProcessorTime;
        var total = Stopwatch.StartNew();
        await Task.WhenAll(Enumerable.Range(0, concurrency).Select(async _ =>
        {
            int i;
            while ((i = Interlocked.Increment(ref next)) < prompts.Length)
            {
                var ms = await Send(i);
                lock (latencies) latencies.Add(ms);
            }
        }));
        double seconds = total.Elapsed.TotalSeconds;
        double cpuMs = (Process.GetCurrentProcess().TotalProcessorTime - cpu0).TotalMilliseconds;
        latencies.Sort();
        double Pct(double p) => latencies[Math.Min(latencies.Count - 1, (int)Math.Ceiling(p * latencies.Count) - 1)];
        return (prompts.Length * (double)tokens / seconds, Pct(0.5), Pct(0.99), cpuMs / (prompts.Length * (double)tokens));
    }
}
