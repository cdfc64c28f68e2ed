using System.CommandLine;
using System.Diagnostics;
using PeftSharp.Training;
using PeftSharp.Training.Recipes;

namespace PeftSharp.Cli.Commands;

/// <summary>
/// <c>peft train CONFIG.yaml [key=value ...]</c>: a LLaMA-Factory YAML (overrides as llamafactory-cli takes them) →
/// trained adapter (or model), trainer_log.jsonl, trainer_state.json, *_results.json, loss.png (training_loss.png with plot_loss).
/// </summary>
public static class TrainCommand
{
    public static Command Create()
    {
        var config = new Argument<string>("config") { Description = "YAML file with LLaMA-Factory's keys (model_name_or_path, dataset, finetuning_type, ...)" };
        var overrides = new Argument<string[]>("overrides") { Description = "key=value pairs that replace the YAML's values (as llamafactory-cli train x.yaml key=value)", Arity = ArgumentArity.ZeroOrMore };
        var device = Cli.DeviceOption();
        var cmd = new Command("train", "Fine-tune a model (LoRA and its variants, prompt methods, adapters, freeze or full) from a YAML config") { config, overrides, device };
        cmd.SetHandler((pr, o) =>
        {
            bool json = pr.GetValue(Cli.JsonOption);
            var cfg = TrainConfig.Load(pr.GetValue(config)!, pr.GetValue(overrides) ?? []);
            bool main = Training.Distributed.DataParallel.IsMainProcess; // under mpirun only rank 0 writes and prints
            var stderr = pr.InvocationConfiguration.Error;
            if (main) foreach (var w in cfg.Warnings) stderr.WriteLine($"warning: {w}");
            var resume = RunOutputs.ResumeFor(cfg);
            if (main && resume is not null && cfg.Training.ResumeFromCheckpoint is null or "false")
                stderr.WriteLine($"resuming from {resume}: output_dir holds checkpoints of an earlier run (as LLaMA-Factory; overwrite_output_dir: true starts over)");
            cfg = cfg with { Training = cfg.Training with { ResumeFromCheckpoint = resume } };
            using var setup = TrainSetup.FromConfig(cfg, Cli.ParseDevice(pr.GetValue(device)!));
            var outDir = cfg.Training.OutputDir;
            var log = Path.Combine(outDir, "trainer_log.jsonl");
            if (resume is null && File.Exists(log) && main) File.Delete(log);
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
            if (trainer.ResumedFrom is { } from && !json) o.WriteLine($"resumed from {from} at step {result.ResumedFromStep}");
            var plot = reporter.SavePlot(outDir);
            if (cfg.Recipe.PlotLoss) reporter.SaveLlamaFactoryPlots(outDir);
            var evalClock = Stopwatch.StartNew();
            EvalResult? eval = setup.Eval.Count > 0 ? trainer.Evaluate(setup.Eval) : null;
            RunOutputs.WriteResults(outDir, trainer, eval, evalClock.Elapsed, cfg.Training.PerDeviceEvalBatchSize);
            var summary = reporter.Finish(result, setup.Target, outDir, plot, eval);
            if (json) Cli.WriteJson(o, summary);
            else reporter.Print(summary);
            return 0;
        });
        return cmd;
    }
}
