using static TorchSharp.torch;

namespace PeftSharp.Hooks;

/// <summary>
/// A hook a training loop calls once per optimizer step (and, optionally, before it), after <c>optimizer.step()</c> and before the gradients are
/// zeroed (so <c>p.grad</c> still holds the step's gradient). AdaLoRA's rank allocator and Delta-LoRA's weight
/// folding use it; the trainer calls every callback of its method itself.
/// </summary>
public interface ITrainingCallback
{
    /// <summary>Before the forwards of an optimizer step (robust AdapterDrop picks the layers to skip here).</summary>
    /// <param name="globalStep">0-based index of the optimizer step about to run.</param>
    void OnStepBegin(int globalStep) { }

    /// <param name="globalStep">0-based index of the optimizer step that just ran.</param>
    void OnStepEnd(int globalStep);
}

/// <summary>
/// A callback with state a resumed run needs (AdaLoRA's importance averages and rank pattern, Delta-LoRA's snapshot).
/// The trainer saves it in checkpoint-N/callbacks.safetensors and restores it after the trainable weights.
/// </summary>
public interface IResumableCallback : ITrainingCallback
{
    /// <summary>The tensors to save, by key (the trainer prefixes them per callback).</summary>
    IEnumerable<KeyValuePair<string, Tensor>> SaveState();

    /// <summary>Restores from the saved tensors (called after the trainable parameters are loaded).</summary>
    void LoadState(IReadOnlyDictionary<string, Tensor> state);
}
