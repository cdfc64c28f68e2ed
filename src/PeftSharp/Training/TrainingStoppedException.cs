namespace PeftSharp.Training;

/// <summary>
/// <see cref="Trainer.Train"/> was cancelled: it stopped between two optimizer steps and, when it had made progress,
/// saved <see cref="Checkpoint"/> first, so <c>resume_from_checkpoint: last</c> continues exactly where it stopped.
/// </summary>
public sealed class TrainingStoppedException(int step, string? checkpoint)
    : OperationCanceledException(checkpoint is null ? $"training stopped at step {step}" : $"training stopped at step {step}; saved {checkpoint}")
{
    /// <summary>Optimizer steps completed.</summary>
    public int Step { get; } = step;

    /// <summary>The checkpoint-N folder written on the way out; null when no step ran since the start (or the resume).</summary>
    public string? Checkpoint { get; } = checkpoint;
}
