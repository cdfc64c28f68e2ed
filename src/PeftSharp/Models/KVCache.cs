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
