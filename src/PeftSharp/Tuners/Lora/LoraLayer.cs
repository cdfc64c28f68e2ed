using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;
using static TorchSharp.torch.nn;

namespace PeftSharp.Tuners.Lora;

/// <summary>Per-adapter hyper-parameters of one LoRA layer (after rank_pattern/alpha_pattern).</summary>
public sealed record LoraAdapterSettings(int R, double Alpha, double Dropout, bool UseRsLora, bool UseDora, string Init)
{
    /// <summary>alpha/r, or alpha/√r with rsLoRA.</summary>
    public double Scaling => UseRsLora ? Alpha / Math.Sqrt(R) : Alpha / R;
}

/// <summary>
/// peft's LoraLayer on the shared <see cref="AdapterLayer"/> bookkeeping: per-adapter settings (rank, alpha, DoRA,
/// rsLoRA), merge by ΔW (DoRA: by the renormalized weight). The math lives in <see cref="LoraLinear"/> and
/// <see cref="LoraEmbedding"/>.
/// </summary>
public abstract class LoraLayer : AdapterLayer, IAutocastLayer
{
    protected readonly Dictionary<string, LoraAdapterSettings> Settings = new();

    protected LoraLayer(string name, Module<Tensor, Tensor> baseLayer) : base(name, baseLayer) { }

    /// <summary>
    /// Set by the trainer's bf16 mode: A and B run in this dtype as torch.autocast runs them (the float32 weights are cast
    /// for each forward and get float32 gradients). Null: they run in their own dtype, as peft casts the input to it.
    /// </summary>
    public ScalarType? AutocastDtype { get; set; }

    public LoraAdapterSettings SettingsOf(string adapter) =>
        Settings.TryGetValue(adapter, out var s) ? s : throw new PeftSharpException($"adapter '{adapter}' is not in this layer");

    public double ScalingOf(string adapter) => SettingsOf(adapter).Scaling;

    /// <summary>The base layer's weight (as stored: [out,in] for Linear, [in,out] for Conv1D, [num,dim] for Embedding; a 4-bit base gives its dequantized weight).</summary>
    public abstract Tensor BaseWeight { get; }

    /// <summary>Adds adapter tensors, initialized as peft does for <paramref name="s"/>.Init, on the base layer's device.</summary>
    public void AddAdapter(string adapter, LoraAdapterSettings s, bool trainable)
    {
        CheckNew(adapter);
        if (s.R <= 0) throw new PeftConfigException($"LoRA rank must be positive; got r={s.R} for adapter '{adapter}'");
        using (no_grad()) CreateTensors(adapter, s);
        Settings[adapter] = s;
        Register(adapter, trainable);
    }

    protected abstract void CreateTensors(string adapter, LoraAdapterSettings s);

    protected override void OnDeleted(string adapter) => Settings.Remove(adapter);

    /// <summary>ΔW of one adapter in the base weight's layout (scaling included), detached.</summary>
    public abstract Tensor DeltaWeight(string adapter);

    /// <summary>
    /// ΔW up to layout and scaling as Left·Right ([rows, r]·[r, cols]: B and A), so its rank can be taken from the r-wide
    /// factors; null for DoRA, whose ΔW also rescales W.
    /// </summary>
    public (Tensor Left, Tensor Right)? DeltaFactors(string adapter) =>
        SettingsOf(adapter).UseDora ? null : (BOf(adapter).flatten(1), AOf(adapter).flatten(1));

    /// <summary>The base weight as merging <paramref name="adapter"/> would leave it (float32 or wider), without changing it.</summary>
    public Tensor MergedWeight(string adapter, ScalarType? dtype = null)
    {
        using var _ = no_grad();
        var w = ComputeMerged(adapter, out var norm, dtype);
        norm?.Dispose();
        return w;
    }

    /// <summary>W' in the base weight's layout (computed in <paramref name="dtype"/>, default the adapter's); for DoRA also the row norms of W + ΔW that unmerge needs.</summary>
    protected abstract Tensor ComputeMerged(string adapter, out Tensor? doraNorm, ScalarType? dtype = null);

    /// <summary>DoRA's merge-time row norms of W + ΔW, which unmerge divides back out.</summary>
    protected readonly Dictionary<string, Tensor> MergeNorms = new();

    /// <summary>Runs before a merge changes the base weight (a 4-bit base is first replaced by its dequantized Linear).</summary>
    protected virtual void PrepareBaseForMerge() { }

    protected override void MergeOne(string adapter)
    {
        using var scope = NewDisposeScope();
        PrepareBaseForMerge();
        var w = BaseWeight;
        if (!Settings[adapter].UseDora)
        {
            w.add_(DeltaWeight(adapter).to(w.dtype));
            return;
        }
        var merged = ComputeMerged(adapter, out var norm);
        MergeNorms[adapter] = norm!.DetachFromDisposeScope();
        w.copy_(merged.to(w.dtype));
    }

    /// <summary>peft's checkpoint names of A and B relative to this module ("lora_A.weight", "lora_embedding_A", ...).</summary>
    protected abstract (string A, string B) StateKeys { get; }
    protected abstract Tensor AOf(string adapter);
    protected abstract Tensor BOf(string adapter);
    protected abstract Tensor? MagnitudeOf(string adapter);

    public override IEnumerable<(string Key, Tensor Value)> AdapterState(string adapter)
    {
        if (!Settings.ContainsKey(adapter)) yield break;
        yield return (StateKeys.A, AOf(adapter));
        yield return (StateKeys.B, BOf(adapter));
        if (MagnitudeOf(adapter) is { } m) yield return ("lora_magnitude_vector", m);
    }

    public override bool LoadAdapterState(string adapter, string key, Tensor value)
    {
        if (!Settings.ContainsKey(adapter)) return false;
        if (key == StateKeys.A) return CopyChecked(AOf(adapter), value, key);
        if (key == StateKeys.B) return CopyChecked(BOf(adapter), value, key);
        return key == "lora_magnitude_vector" && MagnitudeOf(adapter) is { } m && CopyChecked(m, value, key);
    }

    /// <summary>
    /// Adapter tensors are made in float32 on the base layer's device; for a half-precision base they are rounded
    /// through its dtype and kept in float32 (peft's move to the base dtype followed by autocast_adapter_dtype).
    /// </summary>
    protected void RoundThroughBaseDType(Tensor t)
    {
        var dt = BaseWeight.dtype;
        if (dt is ScalarType.BFloat16 or ScalarType.Float16)
            using (no_grad()) t.copy_(t.to(dt));
    }
}
