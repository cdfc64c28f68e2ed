namespace PeftSharp.Training;

/// <summary>What a training run keeps in its output_dir when the final model/adapter files are swapped in.</summary>
public static class TrainerOutputs
{
    /// <summary>
    /// The run's own records survive the swap: checkpoint-N and other subfolders, logs, plots and result files.
    /// Everything else (old weights, configs, shard indexes) is replaced by the new save.
    /// </summary>
    public static Func<string, bool> KeepOnFinalSave(string outputDir) => entry =>
        Directory.Exists(Path.Combine(outputDir, entry))
        || entry.EndsWith(".jsonl", StringComparison.Ordinal) || entry.EndsWith(".png", StringComparison.Ordinal)
        || entry.StartsWith("trainer_", StringComparison.Ordinal) || entry.EndsWith("results.json", StringComparison.Ordinal)
        || entry.StartsWith("events.out.tfevents", StringComparison.Ordinal);
}
