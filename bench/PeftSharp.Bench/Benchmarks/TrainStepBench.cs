using System.Diagnostics;
using System.Text.Json.Nodes;
using PeftSharp.Models;
using PeftSharp.Runtime;
using PeftSharp.Training;
using PeftSharp.Training.Data;
using PeftSharp.Tuners;
using static TorchSharp.torch;

namespace PeftSharp.Bench.Benchmarks;

/// <summary>
/// One optimizer step (forward, backward, clip, AdamW) of the real Trainer on a Llama with hidden 512, 8 layers,
/// 8 heads, intermediate 1376, vocab 8192 (untied), batch 4 × 256. Peak RSS is the process's VmHWM, so run each
/// configuration in its own process: <c>train-step --mode lora --precision bf16</c>. Under mpirun each of N ranks takes
/// batch / N rows of the same global batch (data parallelism, one gradient allreduce per step).
/// </summary>
public sealed class TrainStepBench : IBenchmark
{
    public string Name => "train-step";
    public string Description => "Trainer step time, tokens/s, peak RSS: --mode full|lora|lora_fa --precision fp32|bf16 [--steps 5] [--threads 2|auto] [--batch 4] [--seq 256] [--checkpointing]";

    public BenchResult Run(BenchOptions o)
    {
        var mode = o.Get("mode", "lora");
        var precision = o.Get("precision", "fp32");
        int steps = o.GetInt("steps", 5), warmup = o.GetInt("warmup", 2);
        // A number fixes the thread count; "auto" leaves it to ThreadPolicy (the free cores, re-measured every few seconds).
        var threads = o.Get("threads", "2");
        int batch = o.GetInt("batch", 4), seq = o.GetInt("seq", 256);
        if (mode is not ("full" or "lora" or "lora_fa")) throw new ArgumentException($"--mode {mode}: expected full, lora or lora_fa");
        if (precision is not ("fp32" or "bf16")) throw new ArgumentException($"--precision {precision}: expected fp32 or bf16");
        TorchRuntime.EnsureInitialized();
        if (threads != "auto") ThreadPolicy.Fix(int.TryParse(threads, out var n) && n > 0 ? n : throw new ArgumentException($"--threads {threads}: expected a positive number or auto"));
        manual_seed(0);
        using var model = BenchLlama.Build();
        var target = mode switch
        {
            "full" => TrainingTarget.Full(model),
            // LoRA-FA with peft's projected optimizer: A frozen, so the adapted layers' inputs need not be kept for dA.
            "lora_fa" => AdapterTargets.WithMethodHooks(BenchLora.Target(model, rank: 16), "lora_fa"),
            _ => BenchLora.Target(model, rank: 16),
        };
        var rng = new Random(1);
        var rows = Enumerable.Range(0, batch).Select(_ => new TrainExample { InputIds = Enumerable.Range(0, seq).Select(_ => rng.Next(3, 8192)).ToArray() }).ToList();
        // One output folder per job (ranks of an mpirun job share PMIX_NAMESPACE): data-parallel ranks must run the same config.
        var args = new TrainingArguments
        {
            OutputDir = Path.Combine(Path.GetTempPath(), $"peftsharp-bench-{Environment.GetEnvironmentVariable("PMIX_NAMESPACE")?.Replace('/', '-') ?? Guid.NewGuid().ToString("N")}"), MaxSteps = warmup + steps,
            PerDeviceTrainBatchSize = batch / Math.Max(1, Training.Distributed.DataParallel.WorldSize), LearningRate = 1e-4, LoggingSteps = 1000, Bf16 = precision == "bf16", Shuffle = false,
            GradientCheckpointing = o.Get("checkpointing", "false") == "true",
        };
        var times = new List<double>();
        var cpuTimes = new List<double>();
        var clock = new Stopwatch();
        var cpu0 = Environment.CpuUsage.TotalTime;
        using (var trainer = new Trainer(target with { Save = _ => { } }, args, rows))
        {
            trainer.StepCompleted += s =>
            {
                var cpu = Environment.CpuUsage.TotalTime;
                if (s.Step > warmup) { times.Add(clock.Elapsed.TotalSeconds); cpuTimes.Add((cpu - cpu0).TotalSeconds); }
                clock.Restart();
                cpu0 = cpu;
            };
            clock.Start();
            trainer.Train();
        }
        if (Directory.Exists(args.OutputDir) && Training.Distributed.DataParallel.IsMainProcess) Directory.Delete(args.OutputDir, true);
        times.Sort();
        cpuTimes.Sort();
        double median = times[times.Count / 2];
        var (trainable, all) = target.ParameterCounts();
        var result = new BenchResult { Columns = new[] { "mode", "precision", "s/step (median)", "s/step (min)", "CPU s/step (median)", "tokens/s", "peak RSS MB", "trainable params" } };
        result.Add(mode, precision, median, times[0], cpuTimes[cpuTimes.Count / 2], batch * seq / median, (ProcessMemory.PeakRss() ?? 0) / 1048576.0, $"{trainable:N0} of {all:N0}");
        result.Notes.Add($"{steps} timed steps after {warmup} warmup, threads {ThreadPolicy.Status} × {Training.Distributed.DataParallel.WorldSize} rank(s), global batch {batch} x {seq}; peak RSS covers the whole process (model build included).");
        return result;
    }
}

/// <summary>The train-step model: Llama hidden 512, 8 layers, 8 heads (8 kv), ffn 1376, vocab 8192, untied (~33.7M parameters).</summary>
static class BenchLlama
{
    public static PreTrainedModel Build() => AutoModel.FromConfig(AutoModel.ParseConfig(new JsonObject
    {
        ["model_type"] = "llama", ["vocab_size"] = 8192, ["hidden_size"] = 512, ["intermediate_size"] = 1376,
        ["num_hidden_layers"] = 8, ["num_attention_heads"] = 8, ["num_key_value_heads"] = 8, ["tie_word_embeddings"] = false,
        ["max_position_embeddings"] = 512,
    }));
}

/// <summary>The LoRA configuration the bench measures (r=16 on every linear layer but lm_head).</summary>
static class BenchLora
{
    public static TrainingTarget Target(PreTrainedModel model, int rank) =>
        AdapterTargets.Peft(BenchAdapters.Create(model, "lora", BenchAdapters.Lora(rank)));
}
