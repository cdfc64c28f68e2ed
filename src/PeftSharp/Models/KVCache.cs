using static TorchSharp.torch;

namespace PeftSharp.Models;

/// <summary>
/// Per-layer keys and values, [batch, kv_heads, seq, head_dim], appended at each decode step so the
/// prefix is never recomputed. A cache may start with tensors it does not own (prefix-tuning prefixes);
/// it disposes only the tensors it created.
/// </summary>
public sealed class KVCache : IDisposable
{
    readonly Tensor?[] _keys, _values;
    readonly bool[] _owned;

    public KVCache(int numLayers)
    {
        _keys = new Tensor?[numLayers];
        _values = new Tensor?[numLayers];
        _owned = new bool[numLayers];
    }

    public int NumLayers => _keys.Length;

    /// <summary>Tokens held (of layer 0): the "past length" of the next forward.</summary>
    public long SeqLength => _keys[0]?.shape[2] ?? 0;

    public (Tensor? Key, Tensor? Value) this[int layer] => (_keys[layer], _values[layer]);

    /// <summary>Seeds a layer with externally owned keys/values (e.g. a learned prefix).</summary>
    public void SetPrefix(int layer, Tensor key, Tensor value)
    {
        Release(layer);
        _keys[layer] = key; _values[layer] = value; _owned[layer] = false;
    }

    /// <summary>Appends this step's keys/values and returns the full ones to attend over.</summary>
    public (Tensor Key, Tensor Value) Update(int layer, Tensor key, Tensor value)
    {
        Tensor k, v;
        if (_keys[layer] is null) { k = key.alias(); v = value.alias(); }
        else { k = cat(new[] { _keys[layer]!, key }, 2); v = cat(new[] { _values[layer]!, value }, 2); }
        Release(layer);
        _keys[layer] = k.DetachFromDisposeScope();
        _values[layer] = v.DetachFromDisposeScope();
        _owned[layer] = true;
        return (_keys[layer]!, _values[layer]!);
    }

    /// <summary>Keeps only the given batch rows (sequences that finished leave the batch).</summary>
    public void SelectRows(Tensor rowIndex)
    {
        for (int i = 0; i < NumLayers; i++)
        {
            if (_keys[i] is null) continue;
            var k = _keys[i]!.index_select(0, rowIndex).DetachFromDisposeScope();
            var v = _values[i]!.index_select(0, rowIndex).DetachFromDisposeScope();
            Release(i);
            _keys[i] = k; _values[i] = v; _owned[i] = true;
        }
    }

    /// <summary>
    /// Adds <paramref name="other"/>'s rows after this cache's (continuous batching: sequences join between
    /// decode steps). The shorter side is left-padded with zeros to the longer length; returns how many
    /// columns each side was padded by, which the caller masks out.
    /// </summary>
    public (long PadThis, long PadOther) AppendRows(KVCache other)
    {
        if (other.NumLayers != NumLayers) throw new PeftSharpException($"cannot join caches of {NumLayers} and {other.NumLayers} layers");
        using var scope = NewDisposeScope();
        long a = SeqLength, b = other.SeqLength, width = Math.Max(a, b);
        for (int i = 0; i < NumLayers; i++)
        {
            if (other._keys[i] is null) continue;
            if (_keys[i] is null) { Own(i, other._keys[i]!.clone(), other._values[i]!.clone()); continue; }
            var k = cat(new[] { PadLeft(_keys[i]!, width - a), PadLeft(other._keys[i]!, width - b) }, 0);
            var v = cat(new[] { PadLeft(_values[i]!, width - a), PadLeft(other._values[i]!, width - b) }, 0);
            Own(i, k, v);
        }
        return (width - a, width - b);
    }

    /// <summary>Drops the first <paramref name="columns"/> positions of every row (padding no row attends to any more).</summary>
    public void DropLeft(long columns)
    {
        if (columns <= 0) return;
        using var scope = NewDisposeScope();
        for (int i = 0; i < NumLayers; i++)
        {
            if (_keys[i] is null) continue;
            long len = _keys[i]!.shape[2] - columns;
            Own(i, _keys[i]!.narrow(2, columns, len).contiguous(), _values[i]!.narrow(2, columns, len).contiguous());
        }
    }

    static Tensor PadLeft(Tensor t, long columns) =>
        columns == 0 ? t : cat(new[] { zeros(t.shape[0], t.shape[1], columns, t.shape[3], t.dtype, t.device), t }, 2);

    void Own(int layer, Tensor key, Tensor value)
    {
        key = key.DetachFromDisposeScope();
        value = value.DetachFromDisposeScope();
        Release(layer);
        _keys[layer] = key; _values[layer] = value; _owned[layer] = true;
    }

    void Release(int layer)
    {
        if (_owned[layer]) { _keys[layer]?.Dispose(); _values[layer]?.Dispose(); }
        _keys[layer] = null; _values[layer] = null; _owned[layer] = false;
    }

    public void Dispose()
    {
        for (int i = 0; i < NumLayers; i++) Release(i);
    }
}
