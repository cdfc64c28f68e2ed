using System.CommandLine;
using PeftSharp.Training;

namespace PeftSharp.Cli.Commands;

/// <summary><c>peft train CONFIG.yaml</c>: LLaMA-Factory-style YAML → trained adapter (or model), trainer_log.jsonl, loss.png.</summary>
public static class TrainCommand
{
    public static Command Create()
    {
        var config = new Argument<string>("config") { Description = "YAML file with LLaMA-Factory's keys (model_name_or_path, dataset, finetuning_type, ...)" };
        var device = Cli.DeviceOption();
        var cmd = new Command("train", "Fine-tune a model (LoRA and its variants, prompt methods, adapters or full) from a YAML config") { config, device };
        cmd.SetHandler((pr, o) =>
        {
            bool json = pr.GetValue(Cli.JsonOption);
            var cfg = TrainConfig.Load(pr.GetValue(config)!);
            using var setup = TrainSetup.FromConfig(cfg, Cli.ParseDevice(pr.GetValue(device)!));
            var outDir = cfg.Training.OutputDir;
            var resuming = cfg.Training.ResumeFromCheckpoint is { Length: > 0 } r && r != "false";
            var log = Path.Combine(outDir, "trainer_log.jsonl");
            bool main = Training.Distributed.DataParallel.IsMainProcess; // under mpirun only rank 0 writes and prints
            if (!resuming && File.Exists(log) && main) File.Delete(log);
            var reporter = new TrainingReporter(o, json, $"{Path.GetFileName(setup.ModelDir.TrimEnd('/'))} · {cfg.FinetuningType}");
            if (!json && main)
            {
                var (trainable, all) = setup.Target.ParameterCounts();
                o.WriteLine($"training {setup.ModelDir} ({cfg.FinetuningType}): {setup.Train.Count} rows" +
                    (setup.Eval.Count > 0 ? $", {setup.Eval.Count} held out" : "") + $", {trainable:N0} trainable parameters of {all:N0}");
                if (cfg.Training.Bf16) o.WriteLine(PeftSharp.Runtime.Bf16Policy.Describe());
            }
            using var trainer = new Trainer(setup.Target, cfg.Training, setup.Train, setup.Eval);
            if (main) reporter.Attach(trainer);
            using var ctrlC = new CtrlC(pr.InvocationConfiguration.Error, "stopping after this step and saving a checkpoint");
            TrainResult result;
            try { result = trainer.Train(ctrlC.Token); }
            catch (TrainingStoppedException stop)
            {
                if (!main) return 130;
                reporter.EndBar();
                reporter.SavePlot(outDir);
                if (json) Cli.WriteJson(o, new { Stopped = true, stop.Step, trainer.TotalSteps, stop.Checkpoint });
                else o.WriteLine($"stopped at step {stop.Step}/{trainer.TotalSteps}" +
                    (stop.Checkpoint is null ? "" : $"; saved {stop.Checkpoint} (continue with resume_from_checkpoint: last)"));
                return 130;
            }
            if (!main) return 0;
            var plot = reporter.SavePlot(outDir);
            EvalResult? eval = setup.Eval.Count > 0 ? trainer.Evaluate(setup.Eval) : null;
            var summary = reporter.Finish(result, setup.Target, outDir, plot, eval);
            if (json) Cli.WriteJson(o, summary);
            else reporter.Print(summary);
            return 0;
        });
        return cmd;
    }
}
