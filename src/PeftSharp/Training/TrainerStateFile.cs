using System.Text.Json;
using System.Text.Json.Nodes;
using PeftSharp.IO;

namespace PeftSharp.Training;

/// <summary>
/// HF Trainer's trainer_state.json (global_step, epoch, log_history, best_metric, best_model_checkpoint, ...), written
/// into output_dir at the end and into every checkpoint-N (where the resume fields are added to it).
/// </summary>
public static class TrainerStateFile
{
    public const string FileName = "trainer_state.json";

    public static JsonObject Build(Trainer t, TrainingArguments a) => new()
    {
        ["best_global_step"] = t.Strategies.BestStep,
        ["best_metric"] = t.Strategies.BestMetric,
        ["best_model_checkpoint"] = t.Strategies.BestCheckpoint,
        ["epoch"] = (double)t.GlobalStep / t.StepsPerEpoch,
        ["eval_steps"] = a.EvalSteps > 0 ? a.EvalSteps : a.LoggingSteps,
        ["global_step"] = t.GlobalStep,
        ["is_hyper_param_search"] = false,
        ["is_local_process_zero"] = true,
        ["is_world_process_zero"] = true,
        ["log_history"] = new JsonArray(t.LogHistory.Select(e => (JsonNode)e.DeepClone()).ToArray()),
        ["logging_steps"] = a.LoggingSteps,
        ["max_steps"] = t.TotalSteps,
        ["num_input_tokens_seen"] = 0,
        ["num_train_epochs"] = (int)Math.Ceiling((double)t.TotalSteps / t.StepsPerEpoch),
        ["save_steps"] = a.SaveSteps,
        ["total_flos"] = 0,
        ["train_batch_size"] = a.PerDeviceTrainBatchSize,
        ["trial_name"] = null,
        ["trial_params"] = null,
    };

    /// <summary>HF's closing log_history entry (train_runtime, train_samples_per_second, train_loss = mean step loss of this run).</summary>
    public static JsonObject TrainSummary(Trainer t, TrainingArguments a, TimeSpan elapsed, double meanLoss, int trainRows)
    {
        double seconds = Math.Max(elapsed.TotalSeconds, 1e-9);
        // HF: max_steps × total batch when max_steps is set, else rows × epochs.
        double samples = a.MaxSteps > 0 ? (double)a.MaxSteps * a.PerDeviceTrainBatchSize * a.GradientAccumulationSteps * t.WorldSize : trainRows * a.NumTrainEpochs;
        return new JsonObject
        {
            ["epoch"] = Math.Round((double)t.GlobalStep / t.StepsPerEpoch, 4),
            ["step"] = t.GlobalStep,
            ["total_flos"] = 0,
            ["train_loss"] = Number(meanLoss),
            ["train_runtime"] = Math.Round(seconds, 4),
            ["train_samples_per_second"] = Math.Round(samples / seconds, 3),
            ["train_steps_per_second"] = Math.Round(t.TotalSteps / seconds, 3),
        };
    }

    /// <summary>
    /// LLaMA-Factory's trainer_log.jsonl fields (current_steps, total_steps, lr, percentage, elapsed_time, remaining_time),
    /// added to a training log entry; the remaining time extrapolates the steps run in this process.
    /// </summary>
    public static JsonObject WithLlamaFactoryFields(this JsonObject entry, int stepsRun, int stepsToRun, int step, int total, double lr, TimeSpan elapsed)
    {
        static string Clock(TimeSpan t) => $"{(int)t.TotalHours}:{t.Minutes:00}:{t.Seconds:00}";
        var remaining = stepsRun > 0 ? TimeSpan.FromSeconds(elapsed.TotalSeconds / stepsRun * (stepsToRun - stepsRun)) : TimeSpan.Zero;
        entry["current_steps"] = step;
        entry["lr"] = lr;
        entry["percentage"] = Math.Round(100.0 * step / Math.Max(1, total), 2);
        entry["elapsed_time"] = Clock(elapsed);
        entry["remaining_time"] = Clock(remaining);
        return entry;
    }

    /// <summary>A finite number, or null (JSON has no NaN/Infinity; a resumed run that took no step has no mean loss).</summary>
    public static JsonNode? Number(double d) => double.IsFinite(d) ? JsonValue.Create(d) : null;

    public static void Write(string dir, JsonObject state)
    {
        Directory.CreateDirectory(dir);
        AtomicFile.WriteAllText(Path.Combine(dir, FileName), state.ToJsonString(new JsonSerializerOptions { WriteIndented = true }));
    }
}
