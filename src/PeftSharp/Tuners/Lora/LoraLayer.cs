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

    /// <summary>How this adapter computes, chosen once from its config (peft's use_dora: DoRA, else plain LoRA).</summary>
    public ILoraVariant Variant { get; init; } = UseDora ? LoraVariants.Dora : LoraVariants.Plain;
}

/// <summary>
/// peft's LoraLayer on the shared <see cref="AdapterLayer"/> bookkeeping: per-adapter settings (rank, alpha, rsLoRA)
/// and variant (<see cref="ILoraVariant"/>: plain or DoRA), which computes the adapter's update, merge and unmerge from the
/// primitives a layer gives in one [out, in] layout: A, B, the base weight, the low-rank term. <see cref="LoraLinear"/>
/// and <see cref="LoraEmbedding"/> give those for their base.
/// </summary>
public abstract class LoraLayer : AdapterLayer
{
    protected readonly Dictionary<string, LoraAdapterSettings> Settings = new();
    // A variant's vectors besides A and B (DoRA's magnitude); the subclass registers it after A and B (peft's order).
    protected readonly AdapterModules<WeightHolder> lora_magnitude_vector = new();
    // What a variant's merge left for its unmerge (DoRA's merge-time row norms; never saved).
    readonly Dictionary<string, Tensor?> _mergeState = new();

    protected LoraLayer(string name, Module<Tensor, Tensor> baseLayer) : base(name, baseLayer) { }

    /// <summary>
    /// The running forward's autocast dtype (<see cref="ForwardContext"/>, the trainer's bf16 mode): A and B run in it as
    /// torch.autocast runs them (the float32 weights are cast for each forward and get float32 gradients). Null: they run
    /// in their own dtype, as peft casts the input to it.
    /// </summary>
    public ScalarType? AutocastDtype => ForwardContext.Current?.AutocastDtype;

    public LoraAdapterSettings SettingsOf(string adapter) =>
        Settings.TryGetValue(adapter, out var s) ? s : throw new PeftSharpException($"adapter '{adapter}' is not in this layer");

    public double ScalingOf(string adapter) => SettingsOf(adapter).Scaling;

    public ILoraVariant VariantOf(string adapter) => SettingsOf(adapter).Variant;

    /// <summary>The base layer's weight (as stored: [out,in] for Linear, [in,out] for Conv1D, [num,dim] for Embedding; a 4-bit base gives its dequantized weight).</summary>
    public abstract Tensor BaseWeight { get; }

    /// <summary>Adds adapter tensors, initialized as peft does for <paramref name="s"/>.Init, on the base layer's device.</summary>
    public void AddAdapter(string adapter, LoraAdapterSettings s, bool trainable)
    {
        CheckNew(adapter);
        if (s.R <= 0) throw new PeftConfigException($"LoRA rank must be positive; got r={s.R} for adapter '{adapter}'");
        using (no_grad())
        {
            CreateTensors(adapter, s);
            Settings[adapter] = s;
            s.Variant.Init(this, adapter);
        }
        Register(adapter, trainable);
    }

    /// <summary>Creates A and B, initialized as peft does for <paramref name="s"/>.Init.</summary>
    protected abstract void CreateTensors(string adapter, LoraAdapterSettings s);

    protected override void OnDeleted(string adapter)
    {
        Settings.Remove(adapter);
        lora_magnitude_vector.Remove(adapter);
        if (_mergeState.Remove(adapter, out var state)) state?.Dispose();
    }

    // ---- the primitives a variant computes with, in [out, in] layout (Embedding: out = embedding_dim, in = num_embeddings) ----

    /// <summary>A [r, in] of an adapter.</summary>
    public abstract Tensor AOf(string adapter);
    /// <summary>B [out, r] of an adapter.</summary>
    public abstract Tensor BOf(string adapter);
    /// <summary>The base weight as [out, in] (a view where the stored layout differs).</summary>
    public abstract Tensor WeightOI { get; }
    /// <summary>A weight in [out, in] layout back in the base weight's layout.</summary>
    public abstract Tensor ToBaseLayout(Tensor weightOI);
    /// <summary>Plain LoRA's term for input <paramref name="x"/>: scaling·B(A(dropout(x))) (in the autocast dtype when set).</summary>
    public abstract Tensor LowRankDelta(string adapter, Tensor x);
    /// <summary>B(A(input)), unscaled, for an input as <see cref="DoraInputs"/> returns it.</summary>
    public abstract Tensor LowRankOutput(string adapter, Tensor input);
    /// <summary>
    /// For a variant that rescales the base output: the input of the low-rank path (cast to the adapter's dtype, through
    /// dropout in training) and the base output without bias for it (<paramref name="weightOI"/> in the adapter's dtype).
    /// </summary>
    public abstract (Tensor Input, Tensor BaseResult) DoraInputs(string adapter, Tensor x, Tensor result, Tensor weightOI);

    public Parameter? MagnitudeOf(string adapter) => lora_magnitude_vector.Contains(adapter) ? lora_magnitude_vector[adapter].weight : null;

    internal void AddMagnitude(string adapter, Tensor value) => lora_magnitude_vector.Add(adapter, new WeightHolder(value));

    /// <summary>ΔW of one adapter in the base weight's layout (scaling included), detached.</summary>
    public Tensor DeltaWeight(string adapter)
    {
        using var _ = no_grad();
        return ToBaseLayout(BOf(adapter).matmul(AOf(adapter)) * ScalingOf(adapter)).contiguous();
    }

    /// <summary>
    /// ΔW up to layout and scaling as Left·Right ([rows, r]·[r, cols]: B and A), so its rank can be taken from the r-wide
    /// factors; null for DoRA, whose ΔW also rescales W.
    /// </summary>
    public (Tensor Left, Tensor Right)? DeltaFactors(string adapter) =>
        VariantOf(adapter).IsLowRank ? (BOf(adapter).flatten(1), AOf(adapter).flatten(1)) : null;

    /// <summary>The base weight as merging <paramref name="adapter"/> would leave it (float32 or wider), without changing it.</summary>
    public Tensor MergedWeight(string adapter, ScalarType? dtype = null)
    {
        using var _ = no_grad();
        var w = ComputeMerged(adapter, out var norm, dtype);
        norm?.Dispose();
        return w;
    }

    /// <summary>W' in the base weight's layout (computed in <paramref name="dtype"/>, default the adapter's) and what the variant's unmerge needs.</summary>
    public Tensor ComputeMerged(string adapter, out Tensor? state, ScalarType? dtype = null)
    {
        var dt = dtype ?? AOf(adapter).dtype;
        var delta = BOf(adapter).to(dt).matmul(AOf(adapter).to(dt)) * ScalingOf(adapter);
        return ToBaseLayout(VariantOf(adapter).Merged(this, adapter, WeightOI.to(dt) + delta, out state));
    }

    /// <summary>Runs before a merge changes the base weight (a 4-bit base is first replaced by its dequantized Linear).</summary>
    protected virtual void PrepareBaseForMerge() { }

    protected override void MergeOne(string adapter)
    {
        using var scope = NewDisposeScope();
        PrepareBaseForMerge();
        _mergeState[adapter] = VariantOf(adapter).Merge(this, adapter, BaseWeight);
    }

    protected override void UnmergeOne(string adapter)
    {
        using var scope = NewDisposeScope();
        _mergeState.Remove(adapter, out var state);
        VariantOf(adapter).Unmerge(this, adapter, BaseWeight, state);
    }

    /// <summary>peft's checkpoint names of A and B relative to this module ("lora_A.weight", "lora_embedding_A", ...).</summary>
    protected abstract (string A, string B) StateKeys { get; }

    /// <summary>A and B as the parameters that train (A, B, then the variant's).</summary>
    protected abstract (Parameter A, Parameter B)? Factors(string adapter);

    protected override IEnumerable<Parameter> TrainableTensors(string adapter)
    {
        if (Factors(adapter) is not var (a, b)) yield break;
        yield return a;
        yield return b;
        foreach (var (_, p) in VariantOf(adapter).Extras(this, adapter)) yield return p;
    }

    public override IEnumerable<(string Key, Tensor Value)> AdapterState(string adapter)
    {
        if (!Settings.ContainsKey(adapter)) yield break;
        yield return (StateKeys.A, AOf(adapter));
        yield return (StateKeys.B, BOf(adapter));
        foreach (var (key, p) in VariantOf(adapter).Extras(this, adapter)) yield return (key, p);
    }

    public override bool LoadAdapterState(string adapter, string key, Tensor value)
    {
        if (!Settings.ContainsKey(adapter)) return false;
        if (key == StateKeys.A) return CopyChecked(AOf(adapter), value, key);
        if (key == StateKeys.B) return CopyChecked(BOf(adapter), value, key);
        foreach (var (k, p) in VariantOf(adapter).Extras(this, adapter))
            if (k == key) return CopyChecked(p, value, key);
        return false;
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
