using static TorchSharp.torch;

namespace PeftSharp.Hooks;

/// <summary>The run's optimizer settings a method's own optimizer takes (HF TrainingArguments' meaning).</summary>
public sealed record OptimizerArgs(double LearningRate, double WeightDecay, double Beta1, double Beta2, double Epsilon);

/// <summary>
/// What a tuning method adds to a training run, so a plain trainer runs it: its own optimizer (LoRA-FA), callbacks
/// around each optimizer step (AdaLoRA's rank allocator, Delta-LoRA's W update, robust AdapterDrop) and a term added
/// to each training loss (AdaLoRA's orthogonality regularizer).
/// </summary>
public sealed record MethodHooks
{
    public static readonly MethodHooks None = new();

    /// <summary>The method's optimizer over the trainable parameters; null: the trainer's AdamW (or optim).</summary>
    public Func<OptimizerArgs, IOptimizer>? CreateOptimizer { get; init; }
    public IReadOnlyList<ITrainingCallback> Callbacks { get; init; } = Array.Empty<ITrainingCallback>();
    public Func<Tensor, Tensor>? LossTerm { get; init; }
    /// <summary>Writes the result instead of the adapter folder (the AdapterFusion stage writes its fusion folder).</summary>
    public Action<string>? Save { get; init; }
}
