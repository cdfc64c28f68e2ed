using System.Diagnostics;
using System.Text.Json.Nodes;
using PeftSharp.Models;
using PeftSharp.Runtime;
using PeftSharp.Tuners;
using PeftSharp.Tuners.Lora;
using static TorchSharp.torch;

namespace PeftSharp.Bench.Benchmarks;

/// <summary>
/// What <c>peft inspect-adapter</c> and <c>peft merge</c> do, on a GPT-2-small-shaped model (12 layers, 768 wide,
/// vocab 50257; random weights) with a rank-8 LoRA on every Conv1D whose B is random (as after training): load base +
/// adapter, the parameter report (ranks of ΔW from the factors), and the merged model written to disk. The last row
/// times the old way of getting a rank (an SVD of one d×d ΔW in float64) for one c_fc module, for comparison.
/// </summary>
public sealed class InspectMergeBench : IBenchmark
{
    public string Name => "inspect-merge";
    public string Description => "inspect-adapter and merge on a GPT-2-small-shaped model: [--layers 12] [--hidden 768] [--r 8] [--threads 2]";

    public BenchResult Run(BenchOptions o)
    {
        int layers = o.GetInt("layers", 12), hidden = o.GetInt("hidden", 768), r = o.GetInt("r", 8), threads = o.GetInt("threads", 2);
        TorchRuntime.EnsureInitialized();
        PeftSharp.Runtime.ThreadPolicy.Fix(threads);
        var root = Path.Combine(Path.GetTempPath(), $"peftsharp-inspect-merge-{Guid.NewGuid():N}");
        string modelDir = Path.Combine(root, "model"), adapterDir = Path.Combine(root, "adapter"), outDir = Path.Combine(root, "merged");
        var result = new BenchResult { Columns = new[] { "step", "seconds", "CPU seconds", "detail" } };
        try
        {
            manual_seed(0);
            var config = AutoModel.ParseConfig(new JsonObject
            {
                ["model_type"] = "gpt2", ["vocab_size"] = 50257, ["n_embd"] = hidden, ["n_layer"] = layers, ["n_head"] = hidden / 64,
                ["n_positions"] = 1024, ["n_inner"] = null,
            });
            using (var model = AutoModel.FromConfig(config))
            {
                AutoModel.SavePretrained(model, modelDir);
                var peft = BenchAdapters.Create(model, "lora", BenchAdapters.Lora(r));
                using (no_grad())
                    foreach (var (name, p) in peft.named_parameters().Where(p => p.name.Contains("lora_B")))
                        p.copy_(randn(p.shape) * 0.01);
                peft.SaveAdapter(adapterDir);
            }
            var clock = Stopwatch.StartNew();
            var cpu = Process.GetCurrentProcess();
            double cpuStart = cpu.TotalProcessorTime.TotalSeconds;
            double Cpu() { cpu.Refresh(); var now = cpu.TotalProcessorTime.TotalSeconds; var d = now - cpuStart; cpuStart = now; return d; }
            AdapterParameterReport report;
            using (var m = AutoModel.FromPretrained(modelDir))
            {
                var peft = PeftModel.FromPretrained(m, adapterDir);
                double load = clock.Elapsed.TotalSeconds, loadCpu = Cpu();
                clock.Restart();
                report = peft.ParameterReport();
                double rep = clock.Elapsed.TotalSeconds;
                result.Add("inspect-adapter: load base + adapter", load, loadCpu, $"{m.ParameterCount():N0} parameters");
                result.Add("inspect-adapter: parameter report", rep, Cpu(),
                    $"{report.Modules.Count} modules, ΔW ranks {report.Modules.Min(x => x.DeltaRank)}-{report.Modules.Max(x => x.DeltaRank)} (r={r})");
            }
            clock.Restart();
            Cpu();
            using (var m = AutoModel.FromPretrained(modelDir))
            {
                var peft = PeftModel.LoadWithAdapters(m, new[] { ("default", adapterDir) });
                peft.SetAdapter("default");
                var mergeReport = peft.ParameterReport("default");
                peft.SaveMerged(outDir);
                long bytes = Directory.EnumerateFiles(outDir).Sum(f => new FileInfo(f).Length);
                result.Add("merge: load, report, merge, write", clock.Elapsed.TotalSeconds, Cpu(),
                    $"changed {mergeReport.MergedChangedParameters:N0} of {mergeReport.TargetedWeightParameters:N0}; wrote {bytes / 1048576.0:F0} MiB");

                // The old way, for one module: matrix_rank of the d×d difference in float64.
                var (name, layer) = peft.AdapterLayers().First(l => l.Name.EndsWith("mlp.c_fc", StringComparison.Ordinal));
                var lora = (LoraLayer)layer;
                using var scope = NewDisposeScope();
                clock.Restart();
                Cpu();
                var delta = lora.MergedWeight("default", ScalarType.Float64) - lora.BaseWeight.to(ScalarType.Float64);
                long oldRank = linalg.matrix_rank(delta).item<long>();
                result.Add("old: d×d float64 SVD rank of one module", clock.Elapsed.TotalSeconds, Cpu(),
                    $"{name} [{string.Join("x", lora.BaseWeight.shape)}]: rank {oldRank}; {report.Modules.Count} such modules in the report");
            }
        }
        finally
        {
            if (Directory.Exists(root)) Directory.Delete(root, true);
        }
        result.Notes.Add($"GPT-2-small shape: {layers} layers, hidden {hidden}, vocab 50257; LoRA r={r} on every Conv1D; {threads} threads.");
        return result;
    }
}
