using System.Text.Json;
using System.Text.Json.Nodes;
using PeftSharp.IO;

namespace PeftSharp.Training.Recipes;

/// <summary>
/// What LLaMA-Factory's workflow leaves in output_dir besides the model: train_results.json, eval_results.json and
/// all_results.json (HF Trainer's save_metrics), and its output_dir rule for resuming.
/// </summary>
public static class RunOutputs
{
    /// <summary>Files whose presence (without any checkpoint-N) means output_dir holds a finished model.</summary>
    static readonly string[] ModelFiles = ["adapter_model.safetensors", "adapter_model.bin", "model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "adapter_config.json"];

    /// <summary>
    /// LLaMA-Factory's rule: with no resume_from_checkpoint and no overwrite_output_dir, an output_dir holding
    /// checkpoint-N folders resumes from the newest; one holding a model but no checkpoint is an error.
    /// Returns the resume_from_checkpoint to use.
    /// </summary>
    public static string? ResumeFor(TrainConfig c)
    {
        var resume = c.Training.ResumeFromCheckpoint is { Length: > 0 } r && r != "false" ? r : null;
        var dir = c.Training.OutputDir;
        if (resume is not null || c.Training.OverwriteOutputDir || !Directory.Exists(dir)) return resume;
        var last = Directory.EnumerateDirectories(dir, "checkpoint-*")
            .Select(d => (Ok: int.TryParse(Path.GetFileName(d)["checkpoint-".Length..], out var n), n, d)).Where(x => x.Ok)
            .OrderBy(x => x.n).Select(x => x.d).LastOrDefault();
        if (last is not null) return last;
        if (ModelFiles.Any(f => File.Exists(Path.Combine(dir, f))))
            throw new PeftConfigException($"output_dir '{dir}' already holds a trained model and no checkpoint to resume from; set overwrite_output_dir: true to replace it, or choose another output_dir");
        return null;
    }

    static void Write(string dir, string name, JsonObject metrics) =>
        AtomicFile.WriteAllText(Path.Combine(dir, name), metrics.ToJsonString(new JsonSerializerOptions { WriteIndented = true }));

    /// <summary>Writes train_results.json (from the trainer's closing log entry), eval_results.json when evaluated, and all_results.json.</summary>
    public static void WriteResults(string dir, Trainer trainer, EvalResult? eval, TimeSpan evalTime, int evalBatchSize)
    {
        Directory.CreateDirectory(dir);
        var summary = trainer.LogHistory.LastOrDefault(e => e.ContainsKey("train_runtime"));
        var train = new JsonObject();
        if (summary is not null)
            foreach (var key in new[] { "epoch", "total_flos", "train_loss", "train_runtime", "train_samples_per_second", "train_steps_per_second" })
                train[key] = summary[key]?.DeepClone();
        Write(dir, "train_results.json", train);
        var all = (JsonObject)train.DeepClone();
        if (eval is not null)
        {
            double s = Math.Max(evalTime.TotalSeconds, 1e-9);
            var e = new JsonObject
            {
                ["epoch"] = train["epoch"]?.DeepClone(),
                ["eval_loss"] = TrainerStateFile.Number(eval.Loss),
                ["eval_runtime"] = Math.Round(s, 4),
                ["eval_samples_per_second"] = Math.Round(eval.Rows / s, 3),
                ["eval_steps_per_second"] = Math.Round(Math.Ceiling((double)eval.Rows / evalBatchSize) / s, 3),
                ["perplexity"] = TrainerStateFile.Number(eval.Perplexity),
            };
            if (eval.Accuracy is { } acc) e["eval_accuracy"] = acc;
            Write(dir, "eval_results.json", e);
            foreach (var (k, v) in e) all[k] = v?.DeepClone();
        }
        Write(dir, "all_results.json", all);
    }
}
