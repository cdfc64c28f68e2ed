using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;
using static TorchSharp.torch.nn;

namespace PeftSharp.Tuners;

/// <summary>
/// The bookkeeping every module-replacing adapter layer shares (peft's BaseTunerLayer): the wrapped base layer, named
/// adapters in insertion order, the active set, the disable switch, the per-row adapters of a mixed batch, the merge
/// stack (unmerged in reverse order) and deleting an adapter. A method's layer gives only its tensors and math:
/// which tensors train, how to remove them, how one adapter merges and unmerges, its state dict and its forward.
/// </summary>
public abstract class AdapterLayer : nn.Module<Tensor, Tensor>, IAdapterLayer
{
    // Not readonly: merging into a 4-bit base swaps it (through ModuleSurgery) for its dequantized Linear.
    protected Module<Tensor, Tensor> base_layer;
    readonly List<string> _order = new();
    readonly List<string> _active = new();
    protected readonly List<string> Merged = new();

    protected AdapterLayer(string name, Module<Tensor, Tensor> baseLayer) : base(name)
    {
        base_layer = baseLayer;
        // Registered first so the base weight is the first parameter (tied heads look it up that way).
        register_module("base_layer", baseLayer);
    }

    public nn.Module BaseLayer => base_layer;
    public IReadOnlyList<string> Adapters => _order;
    public IReadOnlyList<string> ActiveAdapters => _active;
    public bool AdaptersDisabled { get; set; }
    /// <summary>The per-row adapters of the running forward (<see cref="ForwardContext"/>), or null.</summary>
    public RowAdapters? RowAdapters => ForwardContext.Current?.Rows;
    public IReadOnlyList<string> MergedAdapters => Merged;
    public nn.Module Unwrapped => base_layer;

    public bool Has(string adapter) => _order.Contains(adapter);

    /// <summary>Refuses a name this layer already holds (before the subclass creates tensors for it).</summary>
    protected void CheckNew(string adapter)
    {
        if (_order.Contains(adapter)) throw new PeftSharpException($"adapter '{adapter}' already exists in this layer");
    }

    /// <summary>Records a new adapter whose tensors the subclass has created.</summary>
    protected void Register(string adapter, bool trainable)
    {
        CheckNew(adapter);
        _order.Add(adapter);
        SetTrainable(adapter, trainable);
    }

    /// <summary>The adapter's trainable tensors (what SetTrainable switches).</summary>
    protected abstract IEnumerable<Parameter> TrainableTensors(string adapter);
    protected abstract void RemoveTensors(string adapter);
    /// <summary>Folds one adapter into the base layer (called without grad).</summary>
    protected abstract void MergeOne(string adapter);
    /// <summary>Takes one merged adapter out of the base layer again (called without grad, newest first).</summary>
    protected abstract void UnmergeOne(string adapter);

    public abstract IEnumerable<(string Key, Tensor Value)> AdapterState(string adapter);
    public abstract bool LoadAdapterState(string adapter, string key, Tensor value);

    public void SetActiveAdapters(IReadOnlyList<string> names)
    {
        _active.Clear();
        _active.AddRange(names.Where(_order.Contains));
    }

    public void SetTrainable(string adapter, bool trainable)
    {
        if (!_order.Contains(adapter)) return;
        foreach (var p in TrainableTensors(adapter)) p.requires_grad = trainable;
    }

    public void DeleteAdapter(string adapter)
    {
        if (!_order.Contains(adapter)) return;
        if (Merged.Contains(adapter)) throw new PeftSharpException($"adapter '{adapter}' is merged; unmerge before deleting it");
        RemoveTensors(adapter);
        _order.Remove(adapter);
        _active.Remove(adapter);
        OnDeleted(adapter);
    }

    /// <summary>After an adapter is deleted: forget what the subclass keeps about it besides its tensors.</summary>
    protected virtual void OnDeleted(string adapter) { }

    public void Merge(IEnumerable<string> names)
    {
        using var _ = no_grad();
        foreach (var a in names)
        {
            if (!_order.Contains(a) || Merged.Contains(a)) continue;
            MergeOne(a);
            Merged.Add(a);
        }
    }

    public void Unmerge()
    {
        using var _ = no_grad();
        while (Merged.Count > 0)
        {
            UnmergeOne(Merged[^1]);
            Merged.RemoveAt(Merged.Count - 1);
        }
    }

    /// <summary>The forward runs the base layer only: adapters disabled, merged, or none active and no per-row adapters.</summary>
    protected bool UseBaseOnly => AdaptersDisabled || Merged.Count > 0 || _active.Count == 0 && RowAdapters is null;

    /// <summary>Mixed batches are for inference over unmerged adapters (peft refuses them in training mode).</summary>
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
}
