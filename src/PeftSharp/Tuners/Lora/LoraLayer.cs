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
/// Bookkeeping shared by the LoRA wrappers (peft's LoraLayer): the base layer, named adapters, the active set,
/// the disable switch and the merge stack. The math lives in <see cref="LoraLinear"/> and <see cref="LoraEmbedding"/>.
/// </summary>
public abstract class LoraLayer : nn.Module<Tensor, Tensor>, IAdapterLayer, IAutocastLayer
{
    // Not readonly: merging into a 4-bit base swaps it (through ModuleSurgery) for its dequantized Linear.
    protected Module<Tensor, Tensor> base_layer;
    protected readonly Dictionary<string, LoraAdapterSettings> Settings = new();
    readonly List<string> _order = new();
    readonly List<string> _active = new();
    protected readonly List<string> Merged = new();

    protected LoraLayer(string name, Module<Tensor, Tensor> baseLayer) : base(name)
    {
        base_layer = baseLayer;
        // Registered first so the base weight is the first parameter (tied heads look it up that way).
        register_module("base_layer", baseLayer);
    }

    public nn.Module BaseLayer => base_layer;
    public IReadOnlyList<string> Adapters => _order;
    public IReadOnlyList<string> ActiveAdapters => _active;
    public bool AdaptersDisabled { get; set; }
    public RowAdapters? RowAdapters { get; set; }
    public IReadOnlyList<string> MergedAdapters => Merged;
    public nn.Module Unwrapped => base_layer;

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
        if (Settings.ContainsKey(adapter)) throw new PeftSharpException($"adapter '{adapter}' already exists in this layer");
        if (s.R <= 0) throw new PeftConfigException($"LoRA rank must be positive; got r={s.R} for adapter '{adapter}'");
        using (no_grad()) CreateTensors(adapter, s);
        Settings[adapter] = s;
        _order.Add(adapter);
        SetTrainable(adapter, trainable);
    }

    protected abstract void CreateTensors(string adapter, LoraAdapterSettings s);
    protected abstract void RemoveTensors(string adapter);
    protected abstract IEnumerable<Parameter> TensorsOf(string adapter);

    /// <summary>ΔW of one adapter in the base weight's layout (scaling included), detached.</summary>
    public abstract Tensor DeltaWeight(string adapter);

    public void SetActiveAdapters(IReadOnlyList<string> names)
    {
        _active.Clear();
        _active.AddRange(names.Where(Settings.ContainsKey));
    }

    public void SetTrainable(string adapter, bool trainable)
    {
        if (!Settings.ContainsKey(adapter)) return;
        foreach (var p in TensorsOf(adapter)) p.requires_grad = trainable;
    }

    public void DeleteAdapter(string adapter)
    {
        if (!Settings.ContainsKey(adapter)) return;
        if (Merged.Contains(adapter)) throw new PeftSharpException($"adapter '{adapter}' is merged; unmerge before deleting it");
        RemoveTensors(adapter);
        Settings.Remove(adapter);
        _order.Remove(adapter);
        _active.Remove(adapter);
    }

    public void Merge(IEnumerable<string> names)
    {
        using var _ = no_grad();
        foreach (var a in names)
        {
            if (!Settings.ContainsKey(a) || Merged.Contains(a)) continue;
            MergeOne(a);
            Merged.Add(a);
        }
    }

    public void Unmerge()
    {
        using var _ = no_grad();
        while (Merged.Count > 0)
        {
            var a = Merged[^1];
            UnmergeOne(a);
            Merged.RemoveAt(Merged.Count - 1);
        }
    }

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

    protected void MergeOne(string adapter)
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
    protected abstract void UnmergeOne(string adapter);

    /// <summary>peft's checkpoint names of A and B relative to this module ("lora_A.weight", "lora_embedding_A", ...).</summary>
    protected abstract (string A, string B) StateKeys { get; }
    protected abstract Tensor AOf(string adapter);
    protected abstract Tensor BOf(string adapter);
    protected abstract Tensor? MagnitudeOf(string adapter);

    public IEnumerable<(string Key, Tensor Value)> AdapterState(string adapter)
    {
        if (!Settings.ContainsKey(adapter)) yield break;
        yield return (StateKeys.A, AOf(adapter));
        yield return (StateKeys.B, BOf(adapter));
        if (MagnitudeOf(adapter) is { } m) yield return ("lora_magnitude_vector", m);
    }

    public bool LoadAdapterState(string adapter, string key, Tensor value)
    {
        if (!Settings.ContainsKey(adapter)) return false;
        if (key == StateKeys.A) return CopyChecked(AOf(adapter), value, key);
        if (key == StateKeys.B) return CopyChecked(BOf(adapter), value, key);
        return key == "lora_magnitude_vector" && MagnitudeOf(adapter) is { } m && CopyChecked(m, value, key);
    }

    /// <summary>Adapters the plain forward applies: the active ones unless disabled or merged.</summary>
    protected bool UseBaseOnly => AdaptersDisabled || Merged.Count > 0 || _active.Count == 0 && RowAdapters is null;

    protected void CheckMixedBatch()
    {
        if (training) throw new PeftSharpException("mixed-adapter batches are for inference: call eval() first (peft refuses them in training mode)");
        if (Merged.Count > 0) throw new PeftSharpException("mixed-adapter batches need unmerged adapters; unmerge first");
    }

    /// <summary>Copies <paramref name="value"/> into <paramref name="target"/> after a shape check.</summary>
    protected static bool CopyChecked(Tensor target, Tensor value, string key)
    {
        if (!target.shape.SequenceEqual(value.shape))
            throw new PeftFormatException(null, $"adapter tensor '{key}' has shape [{string.Join(", ", value.shape)}], the layer expects [{string.Join(", ", target.shape)}] (r or target module mismatch)");
        using (no_grad()) target.copy_(value);
        return true;
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
