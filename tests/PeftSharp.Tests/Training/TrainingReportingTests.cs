using System.Buffers.Binary;
using System.Diagnostics;
using System.Runtime.InteropServices;
using System.Text;
using System.Text.Json.Nodes;
using Google.Protobuf;
using PeftSharp.Runtime;
using PeftSharp.Tests.Tokenization;
using PeftSharp.Training;

namespace PeftSharp.Tests.Training;

/// <summary>report_to: tensorboard event files, Ctrl+C with a checkpoint, and the progress stages a run reports.</summary>
public class TrainingReportingTests
{
    static string WriteRun(string dir, string extra, int maxSteps = 4)
    {
        var model = TinyTokenizer.ModelWithTokenizer("llama-tiny");
        File.WriteAllLines(Path.Combine(dir, "data.jsonl"), Enumerable.Range(0, 12).Select(i => $"{{\"instruction\":\"count {i}\",\"output\":\"{i} {i + 1} {i + 2}\"}}"));
        var yaml = Path.Combine(dir, "run.yaml");
        File.WriteAllText(yaml, $"""
            model_name_or_path: {model}
            finetuning_type: lora
            lora_rank: 4
            lora_target: q_proj,v_proj
            dataset: data.jsonl
            template: alpaca
            cutoff_len: 256
            val_size: 2
            max_steps: {maxSteps}
            per_device_train_batch_size: 2
            learning_rate: 1.0e-3
            logging_steps: 1
            output_dir: {Path.Combine(dir, "out")}
            {extra}
            """);
        return yaml;
    }

    /// <summary>Reads a tfevents file: checks every record's masked CRC32Cs and returns (step, fields) per event.</summary>
    static List<(long Step, string? FileVersion, Dictionary<string, float> Scalars)> ReadEvents(string path)
    {
        var bytes = File.ReadAllBytes(path);
        var events = new List<(long, string?, Dictionary<string, float>)>();
        for (int at = 0; at < bytes.Length;)
        {
            var header = bytes.AsSpan(at, 8);
            Assert.Equal(BinaryPrimitives.ReadUInt32LittleEndian(bytes.AsSpan(at + 8, 4)), TensorBoardEventWriter.MaskedCrc32C(header));
            int len = (int)BinaryPrimitives.ReadUInt64LittleEndian(header);
            var data = bytes.AsSpan(at + 12, len);
            Assert.Equal(BinaryPrimitives.ReadUInt32LittleEndian(bytes.AsSpan(at + 12 + len, 4)), TensorBoardEventWriter.MaskedCrc32C(data));
            at += 12 + len + 4;

            long step = 0; string? version = null; var scalars = new Dictionary<string, float>();
            var input = new CodedInputStream(data.ToArray());
            for (uint tag; (tag = input.ReadTag()) != 0;)
                switch (WireFormat.GetTagFieldNumber(tag))
                {
                    case 1: Assert.True(input.ReadDouble() > 1.6e9); break; // wall_time, seconds since 1970
                    case 2: step = input.ReadInt64(); break;
                    case 3: version = input.ReadString(); break;
                    case 5:
                        var summary = new CodedInputStream(input.ReadBytes().ToByteArray());
                        for (uint st; (st = summary.ReadTag()) != 0;)
                        {
                            var value = new CodedInputStream(summary.ReadBytes().ToByteArray());
                            string name = ""; float v = float.NaN;
                            for (uint vt; (vt = value.ReadTag()) != 0;)
                                if (WireFormat.GetTagFieldNumber(vt) == 1) name = value.ReadString();
                                else if (WireFormat.GetTagFieldNumber(vt) == 2) v = value.ReadFloat();
                                else value.SkipLastField();
                            scalars[name] = v;
                        }
                        break;
                    default: input.SkipLastField(); break;
                }
            events.Add((step, version, scalars));
        }
        return events;
    }

    [Fact]
    public void Masked_crc32c_is_castagnolis_crc_rotated_and_offset()
    {
        uint masked = TensorBoardEventWriter.MaskedCrc32C(Encoding.ASCII.GetBytes("123456789"));
        uint rot = masked - 0xa282ead8;
        Assert.Equal(0xE3069283u, (rot << 15) | (rot >> 17)); // CRC-32C check value
    }

    [Fact]
    public void Report_to_tensorboard_writes_the_logged_scalars_as_tfevents()
    {
        var dir = TestPaths.TempDir();
        var yaml = WriteRun(dir, "report_to: tensorboard\neval_steps: 2");
        var o = new StringWriter(); var e = new StringWriter();
        Assert.True(PeftSharp.Cli.Program.Run(new[] { "train", yaml, "--json" }, o, e) == 0, e.ToString());

        var file = Assert.Single(Directory.GetFiles(Path.Combine(dir, "out", "runs"), "events.out.tfevents.*", SearchOption.AllDirectories));
        var events = ReadEvents(file);
        Assert.Equal("brain.Event:2", events[0].FileVersion);
        var log = File.ReadAllLines(Path.Combine(dir, "out", "trainer_log.jsonl")).Select(l => JsonNode.Parse(l)!.AsObject()).ToList();
        var train = log.Where(l => l["loss"] is not null).ToList();
        Assert.Equal(4, train.Count);
        foreach (var entry in train)
        {
            var ev = Assert.Single(events, x => x.Step == entry["step"]!.GetValue<int>() && x.Scalars.ContainsKey("train/loss"));
            Assert.Equal((float)entry["loss"]!.GetValue<double>(), ev.Scalars["train/loss"]);
            Assert.Equal((float)entry["learning_rate"]!.GetValue<double>(), ev.Scalars["train/learning_rate"]);
            Assert.True(ev.Scalars.ContainsKey("train/grad_norm"));
        }
        var evals = events.Where(x => x.Scalars.ContainsKey("eval/loss")).ToList();
        Assert.Equal(log.Count(l => l["eval_loss"] is not null), evals.Count);
        Assert.Contains(evals, x => x.Step == 2);
    }

    [Fact]
    public void Report_to_an_integration_we_do_not_write_is_refused_by_name()
    {
        var e = Assert.Throws<PeftConfigException>(() => TrainConfig.Parse("model_name_or_path: m\ndataset: d\nreport_to: wandb\n", "x.yaml"));
        Assert.Contains("report_to", e.Message);
        Assert.Contains("wandb", e.Message);
        Assert.Equal(new[] { "none" }, TrainConfig.Parse("model_name_or_path: m\ndataset: d\nreport_to: none\n", "x.yaml").Training.ReportTo);
    }

    sealed class Recorder : IProgressSink
    {
        public readonly List<(string Description, long Total, string Unit, List<long> Reports)> Stages = new();
        public IProgressStage Begin(string description, long total, string unit)
        {
            var s = (description, total, unit, new List<long>());
            lock (Stages) Stages.Add(s);
            return new Stage(s.Item4);
        }
        sealed class Stage(List<long> reports) : IProgressStage
        {
            public void Report(long completed, string? metric = null) { lock (reports) reports.Add(completed); }
            public void Dispose() { }
        }
    }

    [Fact]
    public void Loading_tokenizing_and_evaluating_report_progress_stages()
    {
        var dir = TestPaths.TempDir();
        var yaml = WriteRun(dir, "", maxSteps: 1);
        var recorder = new Recorder();
        using (PeftProgress.Use(recorder))
        {
            var cfg = TrainConfig.Load(yaml);
            using var setup = TrainSetup.FromConfig(cfg, TorchSharp.torch.CPU);
            using var trainer = new Trainer(setup.Target, cfg.Training, setup.Train, setup.Eval);
            trainer.Evaluate(setup.Eval);
        }
        var load = Assert.Single(recorder.Stages, s => s.Description.StartsWith("loading"));
        Assert.Equal("tensors", load.Unit);
        Assert.Equal(load.Total, load.Reports[^1]); // ends at 100 %
        var tokenize = Assert.Single(recorder.Stages, s => s.Description == "tokenizing data.jsonl");
        Assert.Equal(12, tokenize.Total);
        Assert.Equal(12, tokenize.Reports[^1]);
        var eval = Assert.Single(recorder.Stages, s => s.Description == "evaluating");
        Assert.Equal(2, eval.Reports[^1]);
    }

    [DllImport("libc", SetLastError = true)] static extern int kill(int pid, int sig);

    static string Tail(string text) => text.Length > 2000 ? "..." + text[^2000..] : text;

    [Fact]
    public void Sigint_stops_training_after_a_step_and_saves_a_checkpoint_to_resume_from()
    {
        if (!OperatingSystem.IsLinux()) return;
        var dir = TestPaths.TempDir();
        var yaml = WriteRun(dir, "", maxSteps: 100000);
        // A child inherits an ignored SIGINT, and .NET then (as shells expect of background jobs) never raises
        // Ctrl+C: when the test host runs in the background (`./test.sh &`, nohup, some CI runners) SIGINT is
        // ignored here, so the child gets its default disposition back through env (this was the suite's flake).
        bool sigintIgnored = File.ReadLines("/proc/self/status").First(l => l.StartsWith("SigIgn:")) is var ign && (Convert.ToUInt64(ign[7..].Trim(), 16) & 2) != 0;
        var psi = new ProcessStartInfo(sigintIgnored ? "env" : "dotnet") { RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (var a in (sigintIgnored ? ["--default-signal=INT", "dotnet"] : Array.Empty<string>()).Concat([Path.Combine(AppContext.BaseDirectory, "peft.dll"), "train", yaml]))
            psi.ArgumentList.Add(a);
        using var p = Process.Start(psi)!;
        // Drained on their own threads: in a busy test host a thread-pool reader can be starved, the child then blocks
        // writing its step lines to a full pipe and never reaches the point where it stops (the full-suite flake).
        var stdout = PipeDrain.Start(p.StandardOutput);
        var stderr = PipeDrain.Start(p.StandardError);
        var log = Path.Combine(dir, "out", "trainer_log.jsonl");
        // Generous limits: on a loaded 2-core CI machine starting dotnet, loading and tokenizing can take minutes.
        var clock = Stopwatch.StartNew();
        while (!(File.Exists(log) && File.ReadAllLines(log).Length >= 2))
        {
            if (p.WaitForExit(200)) Assert.Fail($"peft train ended early: {stderr.Result}");
            if (clock.Elapsed > TimeSpan.FromMinutes(10)) { p.Kill(); Assert.Fail("training did not log two steps in 10 minutes"); }
        }
        Assert.Equal(0, kill(p.Id, 2)); // SIGINT, what Ctrl+C sends
        if (!p.WaitForExit(600_000))
        {
            p.Kill();
            p.WaitForExit();
            Assert.Fail($"peft train did not stop within 10 minutes of SIGINT; stdout: {Tail(stdout.Result)} stderr: {Tail(stderr.Result)}");
        }
        Assert.True(p.ExitCode == 130, $"exit {p.ExitCode}: {stdout.Result} {stderr.Result}");
        Assert.Contains("stopped at step", stdout.Result);
        var checkpoint = Assert.Single(Directory.GetDirectories(Path.Combine(dir, "out"), "checkpoint-*"));
        int step = int.Parse(Path.GetFileName(checkpoint)["checkpoint-".Length..]);
        Assert.InRange(step, 2, 100000);
        Assert.Contains($"saved {checkpoint}", stdout.Result);
        Assert.Equal(step, JsonNode.Parse(File.ReadAllText(Path.Combine(checkpoint, "trainer_state.json")))!["global_step"]!.GetValue<int>());
    }
}
