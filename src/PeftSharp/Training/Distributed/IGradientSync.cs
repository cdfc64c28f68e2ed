using static TorchSharp.torch;

namespace PeftSharp.Training.Distributed;

/// <summary>
/// What the <see cref="Trainer"/> asks of data parallelism: every rank trains the same model on its own rows of each
/// global batch, and after backward the gradients are averaged so every rank takes the same optimizer step.
/// </summary>
public interface IGradientSync
{
    /// <summary>This process's rank, 0 ≤ Rank &lt; WorldSize.</summary>
    int Rank { get; }
    int WorldSize { get; }
    /// <summary>Rank 0: the one that logs, evaluates and writes checkpoints and the trained result.</summary>
    bool IsMain => Rank == 0;

    /// <summary>
    /// Before the first step: stops the job (on every rank, naming the rank and what differs) unless every rank runs the
    /// same configuration, model and data, then gives every rank rank 0's values of <paramref name="trainable"/>.
    /// </summary>
    void Start(RunFingerprint fingerprint, IReadOnlyList<Tensor> trainable);

    /// <summary>
    /// After backward, before clipping: replaces each gradient by its mean over the ranks (a parameter without a
    /// gradient on every rank keeps none) and returns the mean of <paramref name="loss"/>, in one collective call.
    /// </summary>
    double AverageGradients(IReadOnlyList<Tensor> trainable, double loss);

    /// <summary>
    /// True on every rank when <paramref name="mine"/> is true on any (one tiny collective): before each step, so that a
    /// stop request that reached the ranks at different moments stops them all after the same step.
    /// </summary>
    bool AnyRank(bool mine);

    /// <summary>Waits until every rank gets here (the end of training: rank 0 has written the result).</summary>
    void Barrier();

    /// <summary>Called when this rank cannot go on: the job is ended on exit instead of leaving the others waiting.</summary>
    void Fail();
}
