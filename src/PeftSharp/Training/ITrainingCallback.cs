namespace PeftSharp.Training;

/// <summary>
/// A hook a training loop calls once per optimizer step, after <c>optimizer.step()</c> and before the gradients are
/// zeroed (so <c>p.grad</c> still holds the step's gradient). AdaLoRA's rank allocator and Delta-LoRA's weight
/// folding use it; the trainer calls every callback of its method itself.
/// </summary>
public interface ITrainingCallback
{
    /// <param name="globalStep">0-based index of the optimizer step that just ran.</param>
    void OnStepEnd(int globalStep);
}
