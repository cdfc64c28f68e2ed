using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;
using static TorchSharp.torch.nn;

namespace PeftSharp.Tuners;

/// <summary>
/// A module wrapper that holds a frozen original (<see cref="BaseLayer"/>) plus per-adapter tensors (peft's
/// BaseTunerLayer and auxiliary wrappers). <see cref="PeftModel"/> drives every method through this interface.
/// </summary>
public interface IAdapterLayer
{
    nn.Module BaseLayer { get; }

    /// <summary>Adapters this layer holds, in insertion order.</summary>
    IReadOnlyList<string> Adapters { get; }

    IReadOnlyList<string> ActiveAdapters { get; }

    /// <summary>Activates the given adapters (those this layer lacks are ignored).</summary>
    void SetActiveAdapters(IReadOnlyList<string> names);

    /// <summary>When true the layer computes its base module only (peft's disable_adapter).</summary>
    bool AdaptersDisabled { get; set; }

    IReadOnlyList<string> MergedAdapters { get; }

    /// <summary>Folds the given adapters into the base weights (in place).</summary>
    void Merge(IEnumerable<string> names);

    /// <summary>Undoes every merge, in reverse order.</summary>
    void Unmerge();

    void DeleteAdapter(string name);

    /// <summary>Turns gradients on or off for one adapter's tensors.</summary>
    void SetTrainable(string name, bool trainable);

    /// <summary>
    /// One adapter's tensors under their checkpoint names relative to this module (adapter name removed, e.g.
    /// "lora_A.weight", "lora_magnitude_vector", or "weight" for a modules_to_save copy).
    /// </summary>
    IEnumerable<(string Key, Tensor Value)> AdapterState(string adapter);

    /// <summary>Copies a checkpoint tensor into the adapter's tensor at <paramref name="key"/>; false if the key is not one of its own.</summary>
    bool LoadAdapterState(string adapter, string key, Tensor value);

    /// <summary>The module that replaces this wrapper when adapters are unloaded (merge_and_unload / unload).</summary>
    nn.Module Unwrapped { get; }
}

/// <summary>
/// A layer whose adapter's update is exactly scale·up·down on a linear weight in [out, in] layout (plain LoRA; not
/// DoRA), so it can be exported as factors (a GGUF LoRA adapter) instead of a merged weight.
/// </summary>
public interface ILowRankLayer
{
    /// <summary>down [r, in], up [out, r] and the scale, or null when the adapter's update is not of that form.</summary>
    (Tensor Down, Tensor Up, double Scale)? LowRankFactors(string adapter);
}

/// <summary>
/// Which adapter each row of a batch uses (peft's adapter_names): a name or <see cref="Base"/>. The row index
/// tensors are built once per forward and shared by every layer. A caller that keeps one instance across
/// forwards with the same rows (a decode loop) also keeps what layers derived from their adapters for these
/// rows (<see cref="Cached"/>), so it must dispose it when an adapter's weights change.
/// </summary>
public sealed class RowAdapters : IDisposable
{
    public const string Base = "__base__";

    public IReadOnlyList<string> PerRow { get; }
    /// <summary>Distinct names in first-seen order (including <see cref="Base"/> if present).</summary>
    public IReadOnlyList<string> Distinct { get; }
    readonly Dictionary<string, Tensor> _rows = new();
    readonly Dictionary<object, Tensor[]> _derived = new(ReferenceEqualityComparer.Instance);
    readonly Device _device;

    public RowAdapters(IReadOnlyList<string> perRow, Device device)
    {
        PerRow = perRow;
        Distinct = perRow.Distinct().ToList();
        _device = device;
    }

    /// <summary>Row indices (int64) of the rows that use <paramref name="name"/>.</summary>
    public Tensor Rows(string name)
    {
        if (!_rows.TryGetValue(name, out var t))
        {
            var idx = PerRow.Select((n, i) => (n, i)).Where(p => p.n == name).Select(p => (long)p.i).ToArray();
            _rows[name] = t = tensor(idx, device: _device).DetachFromDisposeScope();
        }
        return t;
    }

    /// <summary>For each row, the position of its adapter in <paramref name="slots"/>, or slots.Count when the row uses none of them.</summary>
    public Tensor SlotPerRow(IReadOnlyList<string> slots)
    {
        var idx = PerRow.Select(n => { int k = IndexOf(slots, n); return (long)(k < 0 ? slots.Count : k); }).ToArray();
        return tensor(idx, device: _device);
    }

    /// <summary>
    /// Tensors <paramref name="owner"/> (a layer) derives for these rows, one entry per row along dim 0 (e.g. each
    /// row's adapter weights): built on the first forward, reused by later forwards with this instance, disposed with it.
    /// </summary>
    public Tensor[] Cached(object owner, Func<Tensor[]> build)
    {
        if (_derived.TryGetValue(owner, out var t)) return t;
        t = build();
        // Over the budget the tensors stay in the caller's dispose scope: that layer rebuilds them on every forward.
        if (_cachedBytes + Bytes(t) <= MaxCachedBytes) Keep(owner, t);
        return t;
    }

    /// <summary>
    /// The most bytes of derived tensors an instance keeps across forwards. Per-row adapter weights grow with rows × r ×
    /// (in + out) per layer (32 rows of r=16 on q/k/v/o of a 7B model: ~2 GiB in float32); past the budget the
    /// remaining layers go back to gathering each forward instead of holding more memory.
    /// </summary>
    public long MaxCachedBytes { get; init; } = 512L << 20;

    long _cachedBytes;

    static long Bytes(Tensor[] t) => t.Sum(x => x.numel() * x.ElementSize);

    void Keep(object owner, Tensor[] t)
    {
        foreach (var x in t) x.DetachFromDisposeScope();
        _derived[owner] = t;
        _cachedBytes += Bytes(t);
    }

    /// <summary>The rows at <paramref name="keep"/> (old indices, in order), keeping what layers derived (rows leave a batch).</summary>
    public RowAdapters Select(long[] keep)
    {
        var result = new RowAdapters(keep.Select(i => PerRow[(int)i]).ToList(), _device) { MaxCachedBytes = MaxCachedBytes };
        using var index = tensor(keep, device: _device);
        foreach (var (owner, d) in _derived) result.Keep(owner, d.Select(t => t.index_select(0, index)).ToArray());
        return result;
    }

    /// <summary>
    /// These rows followed by <paramref name="other"/>'s (rows join a batch). Derived tensors both hold with matching
    /// shapes are concatenated; others are dropped and rebuilt by their layer on the next forward.
    /// </summary>
    public RowAdapters Concat(RowAdapters other)
    {
        var result = new RowAdapters(PerRow.Concat(other.PerRow).ToList(), _device) { MaxCachedBytes = MaxCachedBytes };
        foreach (var (owner, d) in _derived)
            if (other._derived.TryGetValue(owner, out var o) && o.Length == d.Length
                && d.Zip(o).All(p => p.First.shape.Skip(1).SequenceEqual(p.Second.shape.Skip(1)) && p.First.dtype == p.Second.dtype)
                && result._cachedBytes + Bytes(d) + Bytes(o) <= MaxCachedBytes)
                result.Keep(owner, d.Zip(o, (a, b) => cat(new[] { a, b }, 0)).ToArray());
        return result;
    }

    static int IndexOf(IReadOnlyList<string> list, string n)
    {
        for (int i = 0; i < list.Count; i++) if (list[i] == n) return i;
        return -1;
    }

    public void Dispose()
    {
        foreach (var t in _rows.Values) t.Dispose();
        _rows.Clear();
        foreach (var t in _derived.Values.SelectMany(d => d)) t.Dispose();
        _derived.Clear();
    }
}
