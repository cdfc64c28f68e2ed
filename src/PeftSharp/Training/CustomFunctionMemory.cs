using System.Reflection;
using TorchSharp;
using static TorchSharp.torch;

namespace PeftSharp.Training;

/// <summary>
/// TorchSharp 0.107 keeps, for every custom autograd function call, an uninitialized tensor the size of each output
/// until backward, only to stand in for an undefined output gradient. For a function called once per layer that is
/// as much memory as every layer's output: for bf16 storage it made the peak higher than float32's, and for gradient
/// checkpointing it doubled what a checkpoint keeps. A function whose output gradient is always defined turns
/// materialization off in forward (<see cref="Track"/>) and has the tensors freed right after <c>apply</c>
/// (<see cref="Release"/>). Should a TorchSharp update rename the private fields, this does nothing and only the
/// memory saving is lost.
/// </summary>
internal static class CustomFunctionMemory
{
    [ThreadStatic] static autograd.AutogradContext? _last;
    static readonly FieldInfo? NodeField = typeof(autograd.AutogradContext).GetField("_node", BindingFlags.NonPublic | BindingFlags.Instance);

    /// <summary>Called in forward: gradients are not materialized (they are never undefined here) and the context is remembered.</summary>
    public static void Track(autograd.AutogradContext ctx)
    {
        ctx.set_materialize_grads(false);
        _last = ctx;
    }

    /// <summary>Called right after <c>apply</c> on the same thread: frees the stand-in tensors of the call just made.</summary>
    public static void Release()
    {
        var ctx = _last;
        _last = null;
        if (ctx is null || NodeField?.GetValue(ctx) is not { } node) return;
        if (node.GetType().GetField("_outputCache", BindingFlags.NonPublic | BindingFlags.Instance)?.GetValue(node) is not List<Tensor> cache) return;
        for (int i = 0; i < cache.Count; i++)
        {
            cache[i]?.Dispose();
            cache[i] = null!;
        }
    }
}
