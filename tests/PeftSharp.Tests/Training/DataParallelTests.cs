using System.Diagnostics;
using System.Text.Json.Nodes;
using PeftSharp.IO;
using PeftSharp.Tests.Tokenization;
using PeftSharp.Training.Distributed;
using static TorchSharp.torch;

namespace PeftSharp.Tests.Training;

/// <summary>A test that needs Open MPI's mpirun (CI installs it: test.sh runs scripts/setup.sh --mpi); skipped, saying so, where it is absent.</summary>
public sealed class MpiFactAttribute : FactAttribute
{
    public MpiFactAttribute() { if (Mpi.Missing is { } why) Skip = why; }
}

public sealed class MpiTheoryAttribute : TheoryAttribute
{
    public MpiTheoryAttribute() { if (Mpi.Missing is { } why) Skip = why; }
}

/// <summary>Runs `peft` under mpirun (as root in CI, hence --allow-run-as-root; two ranks on two cores: --oversubscribe, no binding).</summary>
public static class Mpi
{
    public static string? Missing { get; } =
        (Environment.GetEnvironmentVariable("PATH") ?? "").Split(':').Any(d => File.Exists(Path.Combine(d, "mpirun"))) ? null
        : "mpirun not found: install Open MPI (scripts/setup.sh --mpi) to run the data-parallel tests";

    public static string Peft => Path.Combine(AppContext.BaseDirectory, "peft.dll");

    /// <summary>Starts mpirun with <paramref name="apps"/> (MPMD: one "-np N dotnet peft.dll ARGS" block each).</summary>
    public static Process Start(IEnumerable<(int Ranks, string[] Args)> apps, IDictionary<string, string>? env = null)
    {
        var psi = new ProcessStartInfo("mpirun") { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        foreach (var a in new[] { "--allow-run-as-root", "--oversubscribe", "--bind-to", "none", "--mca", "btl_vader_single_copy_mechanism", "none" })
            psi.ArgumentList.Add(a);
        bool first = true;
        foreach (var (ranks, args) in apps)
        {
            if (!first) psi.ArgumentList.Add(":");
            first = false;
            psi.ArgumentList.Add("-np"); psi.ArgumentList.Add(ranks.ToString());
            psi.ArgumentList.Add("dotnet"); psi.ArgumentList.Add(Peft);
            foreach (var a in args) psi.ArgumentList.Add(a);
        }
        psi.Environment["OMP_NUM_THREADS"] = "1";
        foreach (var (k, v) in env ?? new Dictionary<string, string>()) psi.Environment[k] = v;
        return Process.Start(psi)!;
    }

    /// <summary>Runs to the end (or <paramref name="timeout"/>, then kills): exit code and all output.</summary>
    public static (int Code, string Output) Run(IEnumerable<(int Ranks, string[] Args)> apps, TimeSpan timeout, IDictionary<string, string>? env = null)
    {
        using var p = Start(apps, env);
        var output = Collect(p);
        if (!p.WaitForExit(timeout))
        {
            p.Kill(entireProcessTree: true);
            p.WaitForExit();
            return (-1, $"mpirun did not end within {timeout.TotalSeconds} s\n{output()}");
        }
        p.WaitForExit();
        return (p.ExitCode, output());
    }

    public static Func<string> Collect(Process p)
    {
        var sb = new System.Text.StringBuilder();
        p.OutputDataReceived += (_, e) => { if (e.Data is not null) lock (sb) sb.AppendLine(e.Data); };
        p.ErrorDataReceived += (_, e) => { if (e.Data is not null) lock (sb) sb.AppendLine(e.Data); };
        p.BeginOutputReadLine(); p.BeginErrorReadLine();
        return () => { lock (sb) return sb.ToString(); };
    }

    /// <summary>The pid of the rank <paramref name="rank"/> whose environment carries <paramref name="tag"/> (mpirun's children).</summary>
    public static int? RankPid(string tag, int rank)
    {
        foreach (var dir in Directory.EnumerateDirectories("/proc"))
        {
            if (!int.TryParse(Path.GetFileName(dir), out int pid)) continue;
            string env;
            try { env = File.ReadAllText(Path.Combine(dir, "environ")); } catch { continue; }
            var vars = env.Split('\0');
            if (vars.Contains($"PEFT_TEST_TAG={tag}") && vars.Contains($"OMPI_COMM_WORLD_RANK={rank}")
                && File.ReadAllText(Path.Combine(dir, "cmdline")).Contains("peft.dll")) return pid;
        }
        return null;
    }
}

/// <summary>
/// Data-parallel training under mpirun: two ranks with batch b follow one process with batch 2b step for step
/// (loss, grad norm, eval loss, final weights) for LoRA, the methods with their own state, and full fine-tuning;
/// mismatched ranks and a dead or hung rank end the job with a message instead of a hang.
/// </summary>
public class DataParallelTests
{
    static string Yaml(string model, string data, string outDir, int batch, string method, string lr = "2.0e-2") => $"""
        model_name_or_path: {model}
        dataset: {data}
        dataset_format: alpaca
        template: default  # answers end in eos: with LLaMA-Factory's empty template (no eos) Adam's first steps amplified 1- vs 2-rank summation noise in delta_lora past the tolerance
        cutoff_len: 32
        val_size: 2
        lora_target: all
        lora_dropout: 0
        learning_rate: {lr}
        num_train_epochs: 2
        per_device_train_batch_size: {batch}
        logging_steps: 1
        seed: 7
        output_dir: {outDir}
        {method}
        """;

    static string Data(string dir, int rows)
    {
        var path = Path.Combine(dir, "data.jsonl");
        File.WriteAllLines(path, Enumerable.Range(0, rows).Select(i =>
        {
            var word = new string(Enumerable.Range(0, 3 + i % 4).Select(k => (char)('a' + (i * 7 + k * 3) % 26)).ToArray());
            return $"{{\"instruction\":\"rv {word}=\",\"output\":\"{new string(word.Reverse().ToArray())}\"}}";
        }));
        return path;
    }

    static List<JsonNode> Log(string outDir) =>
        File.ReadAllLines(Path.Combine(outDir, "trainer_log.jsonl")).Select(l => JsonNode.Parse(l)!).ToList();

    [MpiTheory]
    [InlineData("finetuning_type: lora", "adapter_model.safetensors", "2.0e-2")]
    [InlineData("finetuning_type: adalora\nadalora_init_r: 6\nadalora_target_r: 4\nadalora_tinit: 1\nadalora_tfinal: 2\nadalora_delta_t: 1", "adapter_model.safetensors", "2.0e-2")]
    [InlineData("finetuning_type: delta_lora\ndelta_lora_start_steps: 2", "adapter_model.safetensors", "2.0e-2")]
    [InlineData("finetuning_type: lora_fa\nlora_fa_optimizer: true", "adapter_model.safetensors", "2.0e-2")]
    [InlineData("finetuning_type: full", "model.safetensors", "2.0e-3")]
    public void Two_ranks_with_batch_b_train_like_one_process_with_batch_2b(string method, string weights, string lr)
    {
        var model = TinyTokenizer.ModelWithTokenizer("llama-tiny");
        var dir = TestPaths.TempDir();
        // 13 rows, 2 held out: 11 train rows in global batches of 4, so the last one splits 2 + 1 over the ranks.
        var data = Data(dir, 13);
        string single = Path.Combine(dir, "single"), parallel = Path.Combine(dir, "parallel");
        var singleYaml = Path.Combine(dir, "single.yaml"); var parallelYaml = Path.Combine(dir, "parallel.yaml");
        File.WriteAllText(singleYaml, Yaml(model, data, single, 4, method, lr));
        File.WriteAllText(parallelYaml, Yaml(model, data, parallel, 2, method, lr));

        var (code, _, err) = Cli.CliRunner.Run("train", singleYaml, "--json");
        Assert.True(code == 0, err);
        var (mpiCode, output) = Mpi.Run(new[] { (2, new[] { "train", parallelYaml, "--json" }) }, TimeSpan.FromMinutes(4));
        Assert.True(mpiCode == 0, output);

        List<JsonNode> a = Log(single), b = Log(parallel);
        var steps = a.Where(e => e["loss"] is not null).ToList();
        Assert.Equal(6, steps.Count); // ceil(11 / 4) = 3 steps per epoch, 2 epochs
        Assert.Equal(a.Select(e => e.ToJsonString().Contains("eval_loss")), b.Select(e => e.ToJsonString().Contains("eval_loss")));
        foreach (var (x, y) in a.Zip(b))
            foreach (var key in new[] { "loss", "grad_norm", "eval_loss" })
                if (x[key] is { } vx)
                {
                    double p = vx.GetValue<double>(), q = y[key]!.GetValue<double>();
                    Assert.True(Math.Abs(p - q) <= 2e-4 * Math.Abs(p) + 1e-6, $"{method}: step {x["step"]} {key}: one process {p}, two ranks {q}");
                }

        AssertSameWeights(single, parallel, weights);
        // Only rank 0 wrote: one log line per step and evaluation, no leftover temporary folders.
        Assert.Equal(a.Count, b.Count);
        Assert.Empty(Directory.GetDirectories(parallel, ".*"));
    }

    static void AssertSameWeights(string expectedDir, string actualDir, string file = "adapter_model.safetensors")
    {
        using var fa = SafetensorsFile.Open(Path.Combine(expectedDir, file));
        using var fb = SafetensorsFile.Open(Path.Combine(actualDir, file));
        Assert.Equal(fa.Keys.OrderBy(k => k), fb.Keys.OrderBy(k => k));
        foreach (var key in fa.Keys)
        {
            using var ta = fa.Load(key).to(float32); using var tb = fb.Load(key).to(float32);
            double diff = (ta - tb).abs().max().item<float>();
            Assert.True(diff <= 1e-4 + 1e-3 * ta.abs().max().item<float>(), $"{actualDir}: {key} differs by {diff}");
        }
    }

    [MpiFact]
    public void Checkpoints_resume_with_another_number_of_ranks_and_the_same_global_batch()
    {
        var model = TinyTokenizer.ModelWithTokenizer("llama-tiny");
        var dir = TestPaths.TempDir();
        var data = Data(dir, 13);
        string Write(string name, int batch, string extra)
        {
            var path = Path.Combine(dir, name + ".yaml");
            File.WriteAllText(path, Yaml(model, data, Path.Combine(dir, name), batch, "finetuning_type: lora\nsave_steps: 2\n" + extra));
            return path;
        }
        // One process (batch 4) and two ranks (batch 2) all the way; then each resumes the other's checkpoint.
        var (code, _, err) = Cli.CliRunner.Run("train", Write("single", 4, ""));
        Assert.True(code == 0, err);
        var (mpiCode, output) = Mpi.Run(new[] { (2, new[] { "train", Write("parallel", 2, "") }) }, TimeSpan.FromMinutes(3));
        Assert.True(mpiCode == 0, output);
        var (rc, _, rerr) = Cli.CliRunner.Run("train", Write("single_from_parallel", 4, $"resume_from_checkpoint: {Path.Combine(dir, "parallel", "checkpoint-2")}"));
        Assert.True(rc == 0, rerr);
        (mpiCode, output) = Mpi.Run(new[] { (2, new[] { "train", Write("parallel_from_single", 2, $"resume_from_checkpoint: {Path.Combine(dir, "single", "checkpoint-4")}") }) }, TimeSpan.FromMinutes(3));
        Assert.True(mpiCode == 0, output);
        AssertSameWeights(Path.Combine(dir, "single"), Path.Combine(dir, "parallel"));
        AssertSameWeights(Path.Combine(dir, "single"), Path.Combine(dir, "single_from_parallel"));
        AssertSameWeights(Path.Combine(dir, "single"), Path.Combine(dir, "parallel_from_single"));
        // A different global batch (same number of steps) is refused, naming both.
        var (bad, _, badErr) = Cli.CliRunner.Run("train", Write("other_batch", 2, $"max_steps: 6\nresume_from_checkpoint: {Path.Combine(dir, "parallel", "checkpoint-2")}"));
        Assert.Equal(1, bad);
        Assert.Contains("was 4 when the checkpoint was written but is 2 × 1 = 2 now", badErr);
    }

    [MpiFact]
    public void A_rank_with_another_config_stops_the_job_naming_the_rank_and_the_key()
    {
        var model = TinyTokenizer.ModelWithTokenizer("llama-tiny");
        var dir = TestPaths.TempDir();
        var data = Data(dir, 13);
        var a = Path.Combine(dir, "a.yaml"); var b = Path.Combine(dir, "b.yaml");
        File.WriteAllText(a, Yaml(model, data, Path.Combine(dir, "out"), 2, "finetuning_type: lora"));
        File.WriteAllText(b, Yaml(model, data, Path.Combine(dir, "out"), 2, "finetuning_type: lora").Replace("learning_rate: 2.0e-2", "learning_rate: 1.0e-2"));
        var (code, output) = Mpi.Run(new[] { (1, new[] { "train", a }), (1, new[] { "train", b }) }, TimeSpan.FromMinutes(2));
        Assert.NotEqual(0, code);
        Assert.Contains("rank 1 differs from rank 0 in config: learning_rate: 0.01 (rank 0: learning_rate: 0.02)", output);
        Assert.False(File.Exists(Path.Combine(dir, "out", "adapter_model.safetensors")));
    }

    /// <summary>Two ranks training LoRA for 100000 steps, returned once two steps are logged: the job, its output and its output_dir.</summary>
    static (Process Job, Func<string> Output, string OutDir) StartLongRun(IDictionary<string, string> env)
    {
        var model = TinyTokenizer.ModelWithTokenizer("llama-tiny");
        var dir = TestPaths.TempDir();
        var data = Data(dir, 13);
        var outDir = Path.Combine(dir, "out");
        var yaml = Path.Combine(dir, "long.yaml");
        File.WriteAllText(yaml, Yaml(model, data, outDir, 2, "finetuning_type: lora").Replace("num_train_epochs: 2", "max_steps: 100000"));
        var p = Mpi.Start(new[] { (2, new[] { "train", yaml }) }, env);
        var output = Mpi.Collect(p);
        var log = Path.Combine(outDir, "trainer_log.jsonl");
        var clock = Stopwatch.StartNew();
        while (!(File.Exists(log) && File.ReadAllLines(log).Length >= 2))
        {
            if (p.HasExited) Assert.Fail($"mpirun ended before training: {output()}");
            if (clock.Elapsed > TimeSpan.FromMinutes(3)) { p.Kill(entireProcessTree: true); Assert.Fail($"no training step within 3 minutes: {output()}"); }
            Thread.Sleep(200);
        }
        return (p, output, outDir);
    }

    // Ctrl+C on mpirun terminates the ranks at once (mpirun sends SIGTERM, then SIGKILL); SIGUSR1, which mpirun forwards
    // to every rank, is the clean stop: the ranks agree before each step, so they stop after the same one.
    [MpiFact]
    public void Sigusr1_to_mpirun_stops_every_rank_after_the_same_step_and_rank_0_saves_a_checkpoint()
    {
        var (p, output, outDir) = StartLongRun(new Dictionary<string, string> { [MpiGradientSync.TimeoutVariable] = "60" });
        using var _ = p;
        using (var kill = Process.Start("kill", new[] { "-USR1", p.Id.ToString() })) kill.WaitForExit();
        bool ended = p.WaitForExit(TimeSpan.FromMinutes(2));
        if (!ended) p.Kill(entireProcessTree: true);
        Assert.True(ended, $"the job did not stop within 2 minutes of SIGUSR1: {output()}");
        p.WaitForExit();
        var text = output();
        Assert.True(p.ExitCode == 130, $"exit {p.ExitCode}: {text}");
        Assert.DoesNotContain("no answer from the other ranks", text);
        var checkpoint = Assert.Single(Directory.GetDirectories(outDir, "checkpoint-*"));
        int step = int.Parse(Path.GetFileName(checkpoint)["checkpoint-".Length..]);
        Assert.Contains($"stopped at step {step}/", text);
        Assert.Equal(step, JsonNode.Parse(File.ReadAllText(Path.Combine(checkpoint, "trainer_state.json")))!["global_step"]!.GetValue<int>());
    }

    [MpiTheory]
    [InlineData("KILL")]
    [InlineData("STOP")]
    public void A_dead_or_hung_rank_ends_the_job_with_an_error_instead_of_a_hang(string signal)
    {
        var tag = Guid.NewGuid().ToString("N");
        var (p, output, _) = StartLongRun(new Dictionary<string, string> { ["PEFT_TEST_TAG"] = tag, [MpiGradientSync.TimeoutVariable] = "5" });
        using var _p = p;
        var victim = Mpi.RankPid(tag, 1);
        Assert.True(victim is not null, "rank 1's process not found");
        using (var kill = Process.Start("kill", new[] { $"-{signal}", victim.ToString()! })) kill.WaitForExit();
        bool ended = p.WaitForExit(TimeSpan.FromSeconds(90));
        if (!ended) p.Kill(entireProcessTree: true);
        Assert.True(ended, $"the job hung after rank 1 got SIG{signal}: {output()}");
        p.WaitForExit();
        Assert.NotEqual(0, p.ExitCode);
        var text = output();
        if (signal == "STOP")
            // Rank 0 waits either in the step's stop agreement or in its gradient allreduce, depending on when rank 1 stopped.
            Assert.Matches("rank 0: no answer from the other ranks for 5 s in the (gradient allreduce|agreement on stopping)", text);
        else
            Assert.Matches("rank 1 .*(signal 9|Killed)|process rank 1", text.Replace('\n', ' '));
    }
}

/// <summary>The parts that need no MPI: reading the launcher's environment and naming a difference between ranks.</summary>
public class DataParallelEnvironmentTests
{
    [Fact]
    public void Launchers_environment_gives_rank_size_and_local_rank()
    {
        (int, int, int) Read(params (string Key, string Value)[] vars) =>
            DataParallel.FromEnvironment(k => vars.FirstOrDefault(v => v.Key == k).Value);
        Assert.Equal((0, 1, 0), Read());
        Assert.Equal((3, 4, 1), Read(("OMPI_COMM_WORLD_RANK", "3"), ("OMPI_COMM_WORLD_SIZE", "4"), ("OMPI_COMM_WORLD_LOCAL_RANK", "1")));
        Assert.Equal((2, 8, 0), Read(("PMI_RANK", "2"), ("PMI_SIZE", "8")));
        Assert.Equal((5, 6, 1), Read(("PMIX_RANK", "5"), ("SLURM_PROCID", "5"), ("SLURM_NTASKS", "6"), ("SLURM_LOCALID", "1")));
        // Slurm tasks without PMI are independent processes, not ranks.
        Assert.Equal((0, 1, 0), Read(("SLURM_PROCID", "5"), ("SLURM_NTASKS", "6")));
    }

    [Fact]
    public void Fingerprint_names_the_first_differing_setting()
    {
        var a = PeftSharp.Training.Distributed.RunFingerprint.Of(new PeftSharp.Training.TrainingArguments { LearningRate = 1e-3 }, nn.Linear(2, 3), Array.Empty<PeftSharp.Training.Data.TrainExample>());
        var b = PeftSharp.Training.Distributed.RunFingerprint.Of(new PeftSharp.Training.TrainingArguments { LearningRate = 2e-3 }, nn.Linear(2, 4), Array.Empty<PeftSharp.Training.Data.TrainExample>());
        Assert.Equal("learning_rate: 0.002 (rank 0: learning_rate: 0.001)", RunFingerprint.FirstDifference(b.Config, a.Config));
        Assert.Contains("weight: Float32 [4, 2] trainable (rank 0: weight: Float32 [3, 2] trainable)", RunFingerprint.FirstDifference(b.Model, a.Model));
        Assert.Equal(a.Data, b.Data);
    }
}
