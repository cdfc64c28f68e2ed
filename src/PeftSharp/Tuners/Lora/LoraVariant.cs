using TorchSharp.Modules;
using static TorchSharp.torch;

namespace PeftSharp.Tuners.Lora;

/// <summary>
/// How one adapter of a <see cref="LoraLayer"/> turns A and B into its update (peft's LoraVariant, lora/variants.py):
/// chosen once per adapter from its config (<see cref="LoraAdapterSettings.Variant"/>), so the Linear and Embedding
/// layers hold the tensors and the layout while the variant holds the math: what it adds to the output, how it merges
/// and unmerges, and its tensors besides A and B. The scaling (alpha/r, rsLoRA's alpha/√r) is the settings' rule.
/// </summary>
public interface ILoraVariant
{
    /// <summary>Its name in reports ("lora", "dora").</summary>
    string Kind { get; }

    /// <summary>Its name in messages ("LoRA", "DoRA").</summary>
    string Title { get; }

    /// <summary>
    /// Whether the update is exactly scaling·B·A (plain LoRA): it can be exported as factors, ranked from them, batched
    /// per row with other such adapters, and its A/B pair stands alone (LoRA-FA).
    /// </summary>
    bool IsLowRank { get; }

    /// <summary>Creates its tensors besides A and B, after those exist (DoRA's magnitude from the initial weight).</summary>
    void Init(LoraLayer layer, string adapter);

    /// <summary>Its tensors besides A and B under their checkpoint keys (trainable, saved and loaded with A and B).</summary>
    IEnumerable<(string Key, Parameter Value)> Extras(LoraLayer layer, string adapter);

    /// <summary>What the adapter adds to <paramref name="result"/>, the running output for input <paramref name="x"/>.</summary>
    Tensor Delta(LoraLayer layer, string adapter, Tensor x, Tensor result);

    /// <summary>
    /// The merged weight in [out, in] layout from <paramref name="combined"/> = W + ΔW; <paramref name="state"/> is what
    /// <see cref="Unmerge"/> needs besides A and B (null: nothing).
    /// </summary>
    Tensor Merged(LoraLayer layer, string adapter, Tensor combined, out Tensor? state);

    /// <summary>Folds the adapter into the base weight <paramref name="weight"/> in place; returns the state unmerge needs.</summary>
    Tensor? Merge(LoraLayer layer, string adapter, Tensor weight);

    /// <summary>Takes the adapter out of <paramref name="weight"/> again, given what <see cref="Merge"/> returned.</summary>
    void Unmerge(LoraLayer layer, string adapter, Tensor weight, Tensor? state);
}

/// <summary>The LoRA variants (peft's use_dora chooses DoRA).</summary>
public static class LoraVariants
{
    public static readonly ILoraVariant Plain = new PlainLora();
    public static readonly ILoraVariant Dora = new DoraVariant();
}

/// <summary>Plain LoRA: ΔW = scaling·B·A; the layer computes the low-rank term in its own layout.</summary>
sealed class PlainLora : ILoraVariant
{
    public string Kind => "lora";
    public string Title => "LoRA";
    public bool IsLowRank => true;
    public void Init(LoraLayer layer, string adapter) { }
    public IEnumerable<(string Key, Parameter Value)> Extras(LoraLayer layer, string adapter) => Array.Empty<(string, Parameter)>();
    public Tensor Delta(LoraLayer layer, string adapter, Tensor x, Tensor result) => layer.LowRankDelta(adapter, x);

    public Tensor Merged(LoraLayer layer, string adapter, Tensor combined, out Tensor? state)
    {
        state = null;
        return combined;
    }

    public Tensor? Merge(LoraLayer layer, string adapter, Tensor weight)
    {
        weight.add_(layer.DeltaWeight(adapter).to(weight.dtype));
        return null;
    }

    public void Unmerge(LoraLayer layer, string adapter, Tensor weight, Tensor? state) => weight.sub_(layer.DeltaWeight(adapter).to(weight.dtype));
}

/// <summary>
/// DoRA (peft-spec §4): a trainable magnitude per output row rescales W + s·BA to m/‖W + s·BA‖ (norm detached in the
/// forward). Merging keeps the merge-time row norms, which unmerge divides back out (peft caches them too; never saved).
/// </summary>
sealed class DoraVariant : ILoraVariant
{
    const string MagnitudeKey = "lora_magnitude_vector";

    public string Kind => "dora";
    public string Title => "DoRA";
    public bool IsLowRank => false;

    public void Init(LoraLayer layer, string adapter)
    {
        using var scope = NewDisposeScope();
        var w = layer.WeightOI.to(ScalarType.Float32) + layer.ScalingOf(adapter) * layer.BOf(adapter).matmul(layer.AOf(adapter));
        layer.AddMagnitude(adapter, linalg.norm(w, dims: new long[] { 1 }).MoveToOuterDisposeScope());
    }

    public IEnumerable<(string Key, Parameter Value)> Extras(LoraLayer layer, string adapter)
    {
        if (layer.MagnitudeOf(adapter) is { } m) yield return (MagnitudeKey, m);
    }

    static Parameter Magnitude(LoraLayer layer, string adapter) =>
        layer.MagnitudeOf(adapter) ?? throw new PeftSharpException($"DoRA adapter '{adapter}' has no {MagnitudeKey}");

    /// <summary>
    /// (m/n − 1)·(result − b) + (m/n)·s·B(A(x)), with n = ‖W + s·BA‖ per output row, detached; the layer gives the input
    /// of the low-rank path and the base output without bias (recomputed through dropout in training).
    /// </summary>
    public Tensor Delta(LoraLayer layer, string adapter, Tensor x, Tensor result)
    {
        double scaling = layer.ScalingOf(adapter);
        var ba = layer.BOf(adapter).matmul(layer.AOf(adapter)).detach();
        var w = layer.WeightOI.to(layer.AOf(adapter).dtype);
        var norm = linalg.norm(w + scaling * ba, dims: new long[] { 1 }).detach();
        var scale = (Magnitude(layer, adapter) / norm).view(1, -1);
        var (input, baseResult) = layer.DoraInputs(adapter, x, result, w);
        var lora = layer.LowRankOutput(adapter, input);
        return (scale - 1) * baseResult + scale * lora * scaling;
    }

    public Tensor Merged(LoraLayer layer, string adapter, Tensor combined, out Tensor? state)
    {
        state = linalg.norm(combined, dims: new long[] { 1 });
        return (Magnitude(layer, adapter).to(combined.dtype) / state).unsqueeze(1) * combined;
    }

    public Tensor? Merge(LoraLayer layer, string adapter, Tensor weight)
    {
        var merged = layer.ComputeMerged(adapter, out var norm);
        weight.copy_(merged.to(weight.dtype));
        return norm!.DetachFromDisposeScope();
    }

    public void Unmerge(LoraLayer layer, string adapter, Tensor weight, Tensor? norm)
    {
        if (norm is null) throw new PeftSharpException($"DoRA adapter '{adapter}' cannot be unmerged: its merge-time weight norm is unknown");
        var delta = layer.BOf(adapter).matmul(layer.AOf(adapter)) * layer.ScalingOf(adapter);
        var factor = (Magnitude(layer, adapter) / norm).unsqueeze(1);
        var restored = layer.WeightOI.to(delta.dtype) / factor - delta;
        weight.copy_(layer.ToBaseLayout(restored).to(weight.dtype));
        norm.Dispose();
    }
}
