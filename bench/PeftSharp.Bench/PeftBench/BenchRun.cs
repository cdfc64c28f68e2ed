using System.Diagnostics;
using System.Globalization;
using System.Runtime.InteropServices;
using System.Text.Json.Nodes;
using PeftSharp.Bench.Benchmarks;
using PeftSharp.Inference;
using PeftSharp.Models;
using PeftSharp.Training;
using PeftSharp.Tuners;
using static TorchSharp.torch;

namespace PeftSharp.Bench.PeftBench;

/// <summary>A task's rows for one base and seed, written as a pre-tokenized dataset `peft train` reads.</summary>
public sealed record TaskData(BenchTask Task, int Seed, string TrainFile, List<(int[] Prompt, int[] Answer, string Text)> Validation, List<(int[] Prompt, int[] Answer, string Text)> Test)
{
    public static TaskData Write(BenchTask task, BenchBase b, int rows, int heldOut, int seed, string dir)
    {
        var (train, held) = task.Split(rows, 2 * heldOut, seed);
        var file = Path.Combine(dir, $"{task.Name}-{b.Name}-{seed}.jsonl");
        using (var w = new StreamWriter(file))
            foreach (var (p, a) in train)
            {
                var (pi, ai) = b.Tokenizer.Encode(p, a);
                var ids = new JsonArray(pi.Concat(ai).Select(i => (JsonNode)i).ToArray());
                var labels = new JsonArray(pi.Select(_ => (JsonNode)(-100)).Concat(ai.Select(i => (JsonNode)i)).ToArray());
                w.WriteLine(new JsonObject { ["input_ids"] = ids, ["labels"] = labels }.ToJsonString());
            }
        List<(int[], int[], string)> Encode(IEnumerable<(string P, string A)> xs) => xs.Select(x =>
        {
            var (pi, ai) = b.Tokenizer.Encode(x.P, x.A);
            return (pi, ai, x.A);
        }).ToList();
        return new TaskData(task, seed, file, Encode(held.Take(heldOut)), Encode(held.Skip(heldOut)));
    }

    /// <summary>Greedy exact-match accuracy: the decoded answer (up to EOS) equals the expected text.</summary>
    public static double Accuracy(ILanguageModel model, BenchTokenizer tok, IReadOnlyList<(int[] Prompt, int[] Answer, string Text)> cases)
    {
        using var scope = NewDisposeScope();
        using var _ = no_grad();
        int maxNew = cases.Max(c => c.Answer.Length) + 1;
        var result = new TextGenerator(model).Generate(cases.Select(c => (IReadOnlyList<int>)c.Prompt).ToList(),
            new GenerationOptions { MaxNewTokens = maxNew, EosTokenIds = new[] { tok.Eos }, PadTokenId = tok.Pad });
        int hits = 0;
        for (int i = 0; i < cases.Count; i++)
            if (tok.Decode(result.NewTokens[i]) == cases[i].Text) hits++;
        return (double)hits / cases.Count;
    }
}

/// <summary>What one training run measured (a row of the sweep; the report aggregates them).</summary>
public sealed record RunResult
{
    public required string Method { get; init; }
    public required string Family { get; init; }
    public required string Base { get; init; }
    public required string Task { get; init; }
    public required int Seed { get; init; }
    public required double Lr { get; init; }
    public required int Steps { get; init; }
    public long Trainable { get; init; }
    public long BaseParameters { get; init; }
    /// <summary>Parameters of the merged model that differ from the base; null where the method leaves no weight delta.</summary>
    public long? ChangedByMerge { get; init; }
    /// <summary>Largest rank of ΔW over the adapted matrices (from the factors); null where there is no ΔW.</summary>
    public long? RankDeltaW { get; init; }
    public double PeakMemoryMb { get; init; }
    public double StepMs { get; init; }
    public double TokensPerSecond { get; init; }
    public double TrainSeconds { get; init; }
    public double ValAccuracy { get; init; }
    public double TestAccuracy { get; init; }
    public double TestLoss { get; init; }
    /// <summary>(training seconds, step, validation accuracy) at each evaluation during training.</summary>
    public List<double[]> Curve { get; init; } = new();
    public double? ForwardVsBase { get; init; }
    public double? MergedVsBase { get; init; }
    public long AdapterBytes { get; init; }
    public string? Error { get; init; }
}

/// <summary>Trains one method on one base and task through `peft train`'s own path (YAML → TrainSetup → Trainer) and measures it.</summary>
public sealed class BenchRunner
{
    public required string WorkDir { get; init; }
    public required int BatchSize { get; init; }
    /// <summary>Validation accuracy every this many steps (the curve behind "time to 90 %").</summary>
    public int EvalEvery { get; set; } = 50;
    public required int LatencyRepeat { get; init; }
    public required Action<string> Log { get; init; }
    /// <summary>Trained adapter folders by (method, base, task, seed), for AdapterFusion's second stage.</summary>
    public Dictionary<string, string> Trained { get; } = new();

    public static string Key(string method, string b, string task, int seed) => $"{method}|{b}|{task}|{seed}";

    public RunResult Run(BenchMethod method, BenchBase b, PreTrainedModel baseModel, TaskData data, int steps, double lr)
    {
        int seed = data.Seed;
        // The folder's name becomes an adapter name when AdapterFusion loads it: letters, digits, '-' and '_' only.
        var outDir = Path.Combine(WorkDir, "runs", Slug($"{method.Name}-{b.Name}-{data.Task.Name}-{seed}-lr{lr.ToString("G3", CultureInfo.InvariantCulture)}"));
        var result = new RunResult { Method = method.Name, Family = method.Family, Base = b.Name, Task = data.Task.Name, Seed = seed, Lr = lr, Steps = steps, BaseParameters = b.Parameters };
        try { return Train(method, b, baseModel, data, steps, lr, seed, outDir, result); }
        catch (Exception e) when (e is PeftSharpException or ArgumentException or InvalidOperationException or ExternalException)
        {
            Log($"  {method.Name} on {b.Name}/{data.Task.Name} lr {lr:G3}: failed: {e.Message}");
            return result with { Error = e.Message.Split('\n')[0] };
        }
        finally
        {
            // Keep only what a later stage reads (AdapterFusion's inputs); the rest is scratch.
            if (Directory.Exists(outDir) && !Trained.ContainsValue(outDir)) Directory.Delete(outDir, true);
        }
    }

    static string Slug(string s) => new(s.Select(c => char.IsAsciiLetterOrDigit(c) || c == '-' ? char.ToLowerInvariant(c) : '_').ToArray());

    string Recipe(BenchMethod method, BenchBase b, int layers, TaskData data, int steps, double lr, int seed, string outDir)
    {
        var keys = method.Keys(steps, layers);
        if (method.Fuses is { } fuses)
        {
            var dirs = fuses.Select(f => Trained.TryGetValue(Key(f, b.Name, data.Task.Name, seed), out var d) ? d
                : throw new InvalidOperationException($"AdapterFusion needs a trained {f} adapter for {b.Name}/{data.Task.Name} first"));
            keys += "adapter_fusion:\n" + string.Concat(dirs.Select(d => $"  - {d}\n"));
        }
        return keys + string.Create(CultureInfo.InvariantCulture, $"""
            model_name_or_path: {b.Dir}
            dataset: {data.TrainFile}
            dataset_format: tokenized
            cutoff_len: 64
            learning_rate: {lr:G4}
            max_steps: {steps}
            per_device_train_batch_size: {BatchSize}
            lr_scheduler_type: cosine
            warmup_ratio: 0.05
            logging_steps: {steps}
            output_dir: {outDir}
            overwrite_output_dir: true
            seed: {seed}

            """);
    }

    RunResult Train(BenchMethod method, BenchBase b, PreTrainedModel baseModel, TaskData data, int steps, double lr, int seed, string outDir, RunResult result)
    {
        var config = TrainConfig.Parse(Recipe(method, b, baseModel.Config.NumHiddenLayers, data, steps, lr, seed, outDir), $"peftbench recipe for {method.Name}");
        // Give back what earlier runs freed, so the peak below is this run's growth.
        GC.Collect();
        PeftSharp.Runtime.TorchRuntime.TrimMemory();
        long rss0 = MethodsBench.RssKb();
        MethodsBench.ResetPeak();
        using var setup = TrainSetup.FromConfig(config);
        var model = (ILanguageModel)setup.Target.Root;
        var curve = new List<double[]>();
        var training = new Stopwatch();
        using (var trainer = new Trainer(setup.Target, config.Training, setup.Train))
        {
            trainer.StepCompleted += r =>
            {
                if (r.Step % EvalEvery != 0 || r.Step == steps) return;
                training.Stop();
                setup.Target.Root.eval();  // the trainer sets train() again before its next step
                curve.Add(new[] { training.Elapsed.TotalSeconds, r.Step, TaskData.Accuracy(model, b.Tokenizer, data.Validation) });
                training.Start();
            };
            training.Start();
            var run = trainer.Train();
            training.Stop();
            double peakMb = (MethodsBench.RssPeakKb() - rss0) / 1024.0;
            setup.Target.Root.eval();
            double val = TaskData.Accuracy(model, b.Tokenizer, data.Validation);
            curve.Add(new[] { training.Elapsed.TotalSeconds, steps, val });
            double test = TaskData.Accuracy(model, b.Tokenizer, data.Test);
            var testRows = data.Test.Select(c => new PeftSharp.Training.Data.TrainExample
            {
                InputIds = c.Prompt.Concat(c.Answer).ToArray(),
                Labels = c.Prompt.Select(_ => -100).Concat(c.Answer).ToArray(),
            }).ToList();
            double testLoss = trainer.Evaluate(testRows).Loss;
            result = result with
            {
                PeakMemoryMb = peakMb, StepMs = training.Elapsed.TotalMilliseconds / steps, TrainSeconds = training.Elapsed.TotalSeconds,
                TokensPerSecond = run.Tokens / training.Elapsed.TotalSeconds, ValAccuracy = val, TestAccuracy = test, TestLoss = testLoss, Curve = curve,
                Trainable = setup.Target.ParameterCounts().Trainable, AdapterBytes = WeightBytes(outDir),
            };
        }
        Trained[Key(method.Name, b.Name, data.Task.Name, seed)] = outDir;
        return Measure(method, setup, baseModel, data, result);
    }

    static long WeightBytes(string dir) => Directory.Exists(dir)
        ? Directory.EnumerateFiles(dir).Where(f => f.EndsWith(".safetensors") || f.EndsWith(".bin")).Sum(f => new FileInfo(f).Length)
        : 0;

    /// <summary>Parameter accounting, then latency unmerged and merged against the base (CPU ms, alternated).</summary>
    RunResult Measure(BenchMethod method, TrainSetup setup, PreTrainedModel baseModel, TaskData data, RunResult result)
    {
        var batch = data.Test.Take(16).Select(c => c.Prompt).ToList();
        int len = batch.Max(p => p.Length);
        using var ids = tensor(batch.SelectMany(p => Enumerable.Repeat(p[^1], len - p.Length).Concat(p)).Select(i => (long)i).ToArray(), new long[] { batch.Count, len });
        double Ratio(ILanguageModel m)
        {
            using var _ = no_grad();
            var inputs = new ModelInputs { InputIds = ids };
            void Forward(ILanguageModel lm) { using var s = NewDisposeScope(); lm.Forward(inputs); }
            var (a, basis) = MethodsBench.Alternate(() => Forward(m), () => Forward(baseModel), LatencyRepeat);
            return a / basis;
        }
        if (setup.Target.Root is not PeftModel peft)
        {
            // Full fine-tuning: every weight may change; ΔW is full rank in general; no adapter to merge.
            long changed;
            using (no_grad())
                changed = setup.Model.named_parameters().Zip(baseModel.named_parameters())
                    .Sum(p => p.First.parameter.to(p.Second.parameter.dtype).ne(p.Second.parameter).sum().item<long>());
            return result with { ChangedByMerge = changed, RankDeltaW = null, ForwardVsBase = Ratio(setup.Model), MergedVsBase = 1.0 };
        }
        var report = peft.ParameterReport();
        var ranked = report.Modules.Where(m => m.DeltaRank >= 0).ToList();
        result = result with
        {
            ChangedByMerge = report.TargetedWeightParameters == 0 ? null : report.MergedChangedParameters,
            RankDeltaW = ranked.Count == 0 ? null : ranked.Max(m => m.DeltaRank),
            ForwardVsBase = Ratio(peft),
        };
        try
        {
            var merged = peft.MergeAndUnload();
            return result with { MergedVsBase = Ratio(merged) };
        }
        catch (PeftSharpException) { return result; }  // prompts, bottlenecks, prefixes: nothing to fold into the weights
    }
}
