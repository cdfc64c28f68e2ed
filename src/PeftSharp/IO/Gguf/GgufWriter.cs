namespace PeftSharp.IO.Gguf;

/// <summary>
/// Builds a GGUF file: metadata in insertion order, then tensors whose data is produced when the file is written
/// (so a model is converted one tensor at a time). The file appears atomically at its path.
/// </summary>
public sealed class GgufWriter
{
    sealed record PendingTensor(string Name, long[] Ne, GgmlType Type, Func<byte[]> Data);

    readonly List<KeyValuePair<string, GgufValue>> _metadata = new();
    readonly List<PendingTensor> _tensors = new();
    readonly HashSet<string> _names = new(StringComparer.Ordinal);

    public int Alignment { get; init; } = Gguf.DefaultAlignment;

    public GgufWriter Add(string key, GgufValue value)
    {
        if (_metadata.Any(kv => kv.Key == key)) throw new ArgumentException($"GGUF metadata key '{key}' set twice");
        _metadata.Add(new(key, value));
        return this;
    }

    /// <summary>
    /// Adds a tensor. <paramref name="torchShape"/> is in torch order (outermost first); <paramref name="data"/> returns
    /// its bytes in <paramref name="type"/>'s layout, row-major in that shape, and is called once while writing.
    /// </summary>
    public void AddTensor(string name, long[] torchShape, GgmlType type, Func<byte[]> data)
    {
        if (!_names.Add(name)) throw new ArgumentException($"GGUF tensor '{name}' added twice");
        if (name.Length > 63) throw new ArgumentException($"GGUF tensor name '{name}' is longer than ggml's 63 bytes");
        var ne = torchShape.Reverse().ToArray();
        if (type == GgmlType.Q8_0 && ne[0] % Gguf.Q8BlockSize != 0)
            throw new ArgumentException($"GGUF tensor '{name}': Q8_0 needs the innermost dimension ({ne[0]}) to be a multiple of {Gguf.Q8BlockSize}");
        _tensors.Add(new PendingTensor(name, ne, type, data));
    }

    public int TensorCount => _tensors.Count;

    public void Write(string path)
    {
        AtomicFile.Write(path, stream =>
        {
            using var w = new BinaryWriter(stream, Gguf.Utf8, leaveOpen: true);
            w.Write(Gguf.Magic);
            w.Write(Gguf.Version);
            w.Write((ulong)_tensors.Count);
            var metadata = _metadata.ToList();
            if (Alignment != Gguf.DefaultAlignment && metadata.All(kv => kv.Key != "general.alignment"))
                metadata.Add(new("general.alignment", GgufValue.U32((uint)Alignment)));
            w.Write((ulong)metadata.Count);
            foreach (var (key, value) in metadata)
            {
                WriteString(w, key);
                w.Write((uint)value.Type);
                WriteValue(w, value);
            }
            long offset = 0;
            var sizes = new List<long>();
            foreach (var t in _tensors)
            {
                WriteString(w, t.Name);
                w.Write((uint)t.Ne.Length);
                foreach (var d in t.Ne) w.Write((ulong)d);
                w.Write((uint)t.Type);
                w.Write((ulong)offset);
                long size = Gguf.ByteSize(t.Type, t.Ne.Aggregate(1L, (a, b) => a * b));
                sizes.Add(size);
                offset = Gguf.Align(offset + size, Alignment);
            }
            w.Flush();
            Pad(stream, Alignment);
            for (int i = 0; i < _tensors.Count; i++)
            {
                var bytes = _tensors[i].Data();
                if (bytes.LongLength != sizes[i])
                    throw new InvalidOperationException($"GGUF tensor '{_tensors[i].Name}': {bytes.LongLength} bytes produced, {sizes[i]} expected");
                stream.Write(bytes);
                Pad(stream, Alignment);
            }
        });
    }

    static void Pad(Stream s, int alignment)
    {
        long pad = Gguf.Align(s.Position, alignment) - s.Position;
        for (long i = 0; i < pad; i++) s.WriteByte(0);
    }

    static void WriteString(BinaryWriter w, string s)
    {
        var bytes = Gguf.Utf8.GetBytes(s);
        w.Write((ulong)bytes.Length);
        w.Write(bytes);
    }

    static void WriteValue(BinaryWriter w, GgufValue v)
    {
        switch (v.Type)
        {
            case GgufValueType.UInt32: w.Write(Convert.ToUInt32(v.Value)); break;
            case GgufValueType.Int32: w.Write(Convert.ToInt32(v.Value)); break;
            case GgufValueType.Float32: w.Write(Convert.ToSingle(v.Value)); break;
            case GgufValueType.Bool: w.Write((byte)((bool)v.Value ? 1 : 0)); break;
            case GgufValueType.String: WriteString(w, (string)v.Value); break;
            case GgufValueType.Array:
                w.Write((uint)v.ElementType);
                switch (v.ElementType)
                {
                    case GgufValueType.String:
                        var strings = (IReadOnlyList<string>)v.Value;
                        w.Write((ulong)strings.Count);
                        foreach (var s in strings) WriteString(w, s);
                        break;
                    case GgufValueType.Float32:
                        var floats = (IReadOnlyList<float>)v.Value;
                        w.Write((ulong)floats.Count);
                        foreach (var f in floats) w.Write(f);
                        break;
                    case GgufValueType.Int32:
                        var ints = (IReadOnlyList<int>)v.Value;
                        w.Write((ulong)ints.Count);
                        foreach (var i in ints) w.Write(i);
                        break;
                    default: throw new ArgumentException($"GGUF arrays of {v.ElementType} are not written by this library");
                }
                break;
            default: throw new ArgumentException($"GGUF values of type {v.Type} are not written by this library");
        }
    }
}
