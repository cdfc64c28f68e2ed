using System.Diagnostics;
using System.Globalization;
using System.Text.Json;
using PeftSharp.Models;
using static TorchSharp.torch;

namespace PeftSharp.Bench.PeftBench;

/// <summary>
/// The standard PEFT benchmark: every method of the catalogue and full fine-tuning, trained through `peft train`'s own
/// recipe path on held-out-evaluated procedural tasks, at three sizes of one Llama architecture (pretrained here and
/// cached) plus the real stories260K model. Reports the three parameter counts (trainable, changed by merge, rank of
/// ΔW), memory, speed, time to 90 % of full fine-tuning's accuracy, inference latency and quality over seeds, writes
/// results.json (the tables' source), tables.md and PNG plots into --out.
/// Options: --quick, --sizes 1m,8m,30m,stories260k, --tasks shift,recall,reversal, --methods NAME|family,...,
/// --seeds 3, --steps N, --sweep 3|1 (learning rates tried per method; 1: the method's own), --rows 4000, --held-out 100,
/// --batch 16, --out DIR, --cache DIR, --stories DIR, --lr-from FILE (rates an earlier run chose; no sweep for them),
/// --from a.json[,b.json] (redraw the report from saved runs; a later file's rows replace the same method, base and task).
/// </summary>
public sealed class PeftBenchmark : IBenchmark
{
    public string Name => "peftbench";
    public string Description => "The standard PEFT benchmark: every method x model sizes x tasks; parameter counts, memory, speed, time to 90% of full FT, latency, held-out accuracy; report + plots";

    /// <summary>Training steps per size when --steps is not given (quick, full).</summary>
    static int DefaultSteps(string size, bool quick) => (size, quick) switch
    {
        ("1m", true) => 120, ("8m", true) => 60, ("stories260k", true) => 120,
        ("1m", false) => 800, ("8m", false) => 400, ("30m", false) => 200, _ => 400,
    };

    public BenchResult Run(BenchOptions o)
    {
        var outDir = o.Get("out", "bench-output/peftbench");
        Directory.CreateDirectory(outDir);
        if (o.Args.TryGetValue("from", out var from))
            return Finish(BenchReport.Combine(from.Split(',', StringSplitOptions.RemoveEmptyEntries).Select(f => Load(f, "--from")).ToList()), outDir);
        bool quick = o.Get("quick", "false") == "true";
        var sizes = o.Get("sizes", quick ? "1m,8m" : "1m,8m,30m,stories260k").Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
        var tasks = o.Get("tasks", quick ? "classify" : "shift,recall,reversal").Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries).Select(BenchTasks.Get).ToList();
        var methods = BenchMethods.Select(o.Args.GetValueOrDefault("methods"));
        int seeds = o.GetInt("seeds", quick ? 1 : 3), rows = o.GetInt("rows", 4000), heldOut = o.GetInt("held-out", quick ? 32 : 100);
        int batch = o.GetInt("batch", 16), threads = o.GetInt("threads", 2), sweepPoints = o.GetInt("sweep", quick ? 1 : 3);
        if (sweepPoints is not (1 or 3)) throw new ArgumentException("--sweep must be 1 (the method's learning rate) or 3 (half, once and twice it)");
        if (seeds < 1 || rows < 16 || heldOut < 4 || batch < 1) throw new ArgumentException("--seeds, --rows, --held-out and --batch must be positive (rows >= 16, held-out >= 4)");
        var cache = o.Get("cache", Path.Combine(Environment.GetFolderPath(Environment.SpecialFolder.UserProfile), ".cache", "peftsharp", "peftbench"));
        Directory.CreateDirectory(cache);
        set_num_threads(threads);
        void Log(string line) => Console.Error.WriteLine(line);

        var clock = Stopwatch.StartNew();
        var work = Path.Combine(Path.GetTempPath(), $"peftbench-{Environment.ProcessId}");
        Directory.CreateDirectory(work);
        var runner = new BenchRunner { WorkDir = work, BatchSize = batch, LatencyRepeat = quick ? 2 : 5, Log = Log };
        var report = new BenchReport
        {
            Command = "peftbench " + string.Join(' ', o.Args.Select(kv => kv.Value == "true" ? $"--{kv.Key}" : $"--{kv.Key} {kv.Value}")),
            Cpu = CpuInfo(), Threads = threads, Seeds = seeds, Quick = quick, Versions = Versions(),
        };
        // The LR chosen on the first size a task ran on is reused on the larger ones (the sweep costs 3 runs a method).
        var chosenLr = new Dictionary<(string Method, string Task), double>();
        // --lr-from: the rates an earlier run chose (its sweep), so one size can run in another process without sweeping again.
        if (o.Args.TryGetValue("lr-from", out var lrFrom))
            foreach (var row in Load(lrFrom, "--lr-from").Rows.Where(r => r.Error is null))
                chosenLr.TryAdd((row.Method, row.Task), row.Lr);
        try
        {
            foreach (var sizeName in sizes)
            {
                var b = BenchBases.Get(sizeName, cache, o.Args.GetValueOrDefault("stories"), 1234, quick, Log);
                report.Bases.Add(new BaseInfo(b.Name, b.Parameters, b.Origin));
                using var baseModel = AutoModel.FromPretrained(b.Dir);
                baseModel.eval();
                int steps = o.GetInt("steps", DefaultSteps(b.Name, quick));
                runner.EvalEvery = Math.Max(1, steps / (quick ? 4 : 8));
                foreach (var task in tasks)
                {
                    var data = Enumerable.Range(0, seeds).Select(s => TaskData.Write(task, b, rows, heldOut, 1000 + s, work)).ToList();
                    double baseAcc = TaskData.Accuracy(baseModel, b.Tokenizer, data[0].Test);
                    Log($"{b.Name}/{task.Name}: base accuracy {baseAcc:P0}; {methods.Count} methods x {steps} steps");
                    double? fullAcc = null;
                    foreach (var m in methods)
                    {
                        var sweep = sweepPoints == 1 ? new[] { m.LrSweep[1] }
                            : chosenLr.TryGetValue((m.Name, task.Name), out var lr) ? new[] { lr } : m.LrSweep;
                        var first = sweep.Select(l => runner.Run(m, b, baseModel, data[0], steps, l)).ToList();
                        var best = first.Where(x => x.Error is null).OrderByDescending(x => x.ValAccuracy).ThenByDescending(x => x.Curve.Average(c => c[2])).FirstOrDefault() ?? first[0];
                        chosenLr.TryAdd((m.Name, task.Name), best.Lr);
                        var all = new List<RunResult> { best };
                        if (best.Error is null)
                            all.AddRange(data.Skip(1).Select(d => runner.Run(m, b, baseModel, d, steps, best.Lr)));
                        var row = MethodRow.From(m, b, task, all, first, baseAcc, fullAcc);
                        if (m.IsFull) fullAcc = row.Accuracy;
                        report.Rows.Add(row);
                        // A long run that is stopped still leaves every finished row (combine them with --from).
                        report.WallSeconds = clock.Elapsed.TotalSeconds;
                        PeftSharp.IO.AtomicFile.WriteAllText(Path.Combine(outDir, "results.partial.json"), JsonSerializer.Serialize(report, BenchReport.JsonOptions));
                        Log($"  {m.Name,-16} lr {best.Lr,-7:G3} acc {row.Accuracy:P0} ± {row.AccuracySpread:P0}  {row.StepMs,7:F1} ms/step  {row.Trainable,10:N0} trainable" + (best.Error is { } e ? $"  ERROR {e}" : ""));
                    }
                }
            }
        }
        finally { try { Directory.Delete(work, true); } catch (IOException) { } }
        report.WallSeconds = clock.Elapsed.TotalSeconds;
        return Finish(report, outDir);
    }

    static BenchResult Finish(BenchReport report, string outDir)
    {
        File.WriteAllText(Path.Combine(outDir, "results.json"), JsonSerializer.Serialize(report, BenchReport.JsonOptions));
        BenchReportWriter.Write(report, outDir);
        var result = new BenchResult { Columns = MethodRow.Columns };
        foreach (var row in report.Rows) result.Add(row.Cells());
        result.Notes.Add($"{report.Command}: {report.WallSeconds / 60:F1} min on {report.Cpu}, {report.Threads} threads; results.json, tables.md and plots in {outDir}.");
        var failed = report.Rows.Where(r => r.Error is not null).ToList();
        if (failed.Count > 0)
        {
            result.ExitCode = 3;
            result.Notes.Add($"FAILED: {string.Join("; ", failed.Select(r => $"{r.Method} on {r.Base}/{r.Task}: {r.Error}"))}");
        }
        result.Notes.Add("trainable = parameters with gradients; changed = merged-model parameters that differ from the base ('-': no weight delta); rank = largest rank of ΔW; to 90% = training seconds until held-out accuracy first reached 90% of full fine-tuning's ('-': never, 'n/a': full fine-tuning scored 0).");
        return result;
    }

    static BenchReport Load(string path, string option)
    {
        try
        {
            return JsonSerializer.Deserialize<BenchReport>(File.ReadAllText(path), BenchReport.JsonOptions)
                ?? throw new ArgumentException($"{option} {path}: not a peftbench results file");
        }
        catch (Exception e) when (e is IOException or JsonException) { throw new ArgumentException($"{option} {path}: {e.Message}"); }
    }

    internal static string CpuInfo()
    {
        try
        {
            var lines = File.ReadLines("/proc/cpuinfo").Take(64).ToList();
            var model = lines.FirstOrDefault(l => l.StartsWith("model name"))?.Split(':', 2)[1].Trim() ?? "unknown CPU";
            var flags = (lines.FirstOrDefault(l => l.StartsWith("flags"))?.Split(':', 2)[1] ?? "").Split(' ');
            string cls = flags.Contains("avx512f") ? "AVX-512" : flags.Contains("avx2") ? "AVX2" : "no AVX2";
            if (flags.Contains("avx512_bf16") || flags.Contains("amx_bf16")) cls += " + native bf16";
            return $"{model} ({cls}, {Environment.ProcessorCount} cores)";
        }
        catch (IOException) { return $"{System.Runtime.InteropServices.RuntimeInformation.OSArchitecture} ({Environment.ProcessorCount} cores)"; }
    }

    static Dictionary<string, string> Versions() => new()
    {
        ["peftsharp"] = typeof(PeftSharp.Tuners.PeftModel).Assembly.GetName().Version?.ToString() ?? "?",
        ["torchsharp"] = typeof(TorchSharp.torch).Assembly.GetName().Version?.ToString() ?? "?",
        [".net"] = Environment.Version.ToString(),
        ["mkl"] = PeftSharp.Runtime.MklAmdDispatch.Status,
    };
}
