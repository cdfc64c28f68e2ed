namespace PeftSharp.IO.Gguf;

/// <summary>One tensor's header entry: ne is innermost first, as in the file.</summary>
public sealed record GgufTensorInfo(string Name, long[] Ne, GgmlType Type, long Offset)
{
    public long Elements => Ne.Aggregate(1L, (a, b) => a * b);
    /// <summary>The shape in torch order (outermost first).</summary>
    public long[] TorchShape => Ne.Reverse().ToArray();
}

/// <summary>
/// Reads a GGUF file's metadata and tensor table (every count, length and offset checked against the file size) and
/// its F32/F16/BF16/Q8_0 tensors as floats. Used to check what <see cref="GgufWriter"/> wrote.
/// </summary>
public sealed class GgufReader
{
    public string FilePath { get; }
    public uint Version { get; }
    public IReadOnlyDictionary<string, GgufValue> Metadata { get; }
    public IReadOnlyList<GgufTensorInfo> Tensors { get; }
    readonly long _dataStart;

    GgufReader(string path, uint version, Dictionary<string, GgufValue> metadata, List<GgufTensorInfo> tensors, long dataStart)
    {
        FilePath = path; Version = version; Metadata = metadata; Tensors = tensors; _dataStart = dataStart;
    }

    public GgufTensorInfo Tensor(string name) =>
        Tensors.FirstOrDefault(t => t.Name == name) ?? throw new PeftFormatException(FilePath, $"no tensor '{name}'");

    public static GgufReader Open(string path)
    {
        using var fs = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.Read);
        long length = fs.Length;
        using var r = new BinaryReader(fs, Gguf.Utf8);
        try
        {
            if (length < 24 || r.ReadUInt32() != Gguf.Magic) throw new PeftFormatException(path, "not a GGUF file (magic 'GGUF' missing)");
            uint version = r.ReadUInt32();
            if (version is < 2 or > 3) throw new PeftFormatException(path, $"GGUF version {version} is not supported (expected 2 or 3)");
            ulong tensorCount = r.ReadUInt64(), kvCount = r.ReadUInt64();
            // Each entry takes at least 8 bytes, so a count beyond that is a corrupt header, not an allocation to attempt.
            if (tensorCount > (ulong)length / 8 || kvCount > (ulong)length / 8) throw new PeftFormatException(path, "tensor or metadata count exceeds the file size");
            var metadata = new Dictionary<string, GgufValue>(StringComparer.Ordinal);
            for (ulong i = 0; i < kvCount; i++)
            {
                var key = ReadString(r, path, length);
                var type = (GgufValueType)r.ReadUInt32();
                if (!metadata.TryAdd(key, ReadValue(r, type, path, length, key)))
                    throw new PeftFormatException(path, $"metadata key '{key}' appears twice");
            }
            int alignment = metadata.TryGetValue("general.alignment", out var a) ? (int)a.AsU32() : Gguf.DefaultAlignment;
            if (alignment <= 0 || (alignment & (alignment - 1)) != 0) throw new PeftFormatException(path, $"general.alignment {alignment} is not a power of two");
            var tensors = new List<GgufTensorInfo>();
            for (ulong i = 0; i < tensorCount; i++)
            {
                var name = ReadString(r, path, length);
                uint dims = r.ReadUInt32();
                if (dims is 0 or > 4) throw new PeftFormatException(path, $"tensor '{name}': {dims} dimensions (ggml has 1 to 4)");
                var ne = new long[dims];
                for (int d = 0; d < dims; d++) ne[d] = checked((long)r.ReadUInt64());
                var type = (GgmlType)r.ReadUInt32();
                if (!Enum.IsDefined(type)) throw new PeftFormatException(path, $"tensor '{name}': ggml type {(uint)type} is not read by this library");
                tensors.Add(new GgufTensorInfo(name, ne, type, checked((long)r.ReadUInt64())));
            }
            long dataStart = Gguf.Align(fs.Position, alignment);
            foreach (var t in tensors)
            {
                long size = Gguf.ByteSize(t.Type, t.Elements);
                if (t.Offset % alignment != 0 || dataStart + t.Offset + size > length)
                    throw new PeftFormatException(path, $"tensor '{t.Name}': data [{t.Offset}, +{size}) is misaligned or runs past the end of the file");
            }
            return new GgufReader(path, version, metadata, tensors, dataStart);
        }
        catch (EndOfStreamException) { throw new PeftFormatException(path, "GGUF header is truncated"); }
        catch (OverflowException) { throw new PeftFormatException(path, "GGUF header holds a size beyond 2^63"); }
    }

    /// <summary>A tensor's values as float32, row-major in torch order.</summary>
    public float[] ReadFloats(string name)
    {
        var t = Tensor(name);
        var bytes = new byte[Gguf.ByteSize(t.Type, t.Elements)];
        using (var fs = new FileStream(FilePath, FileMode.Open, FileAccess.Read, FileShare.Read))
        {
            fs.Position = _dataStart + t.Offset;
            fs.ReadExactly(bytes);
        }
        return t.Type switch
        {
            GgmlType.F32 => System.Runtime.InteropServices.MemoryMarshal.Cast<byte, float>(bytes).ToArray(),
            GgmlType.F16 => System.Runtime.InteropServices.MemoryMarshal.Cast<byte, Half>(bytes).ToArray().Select(h => (float)h).ToArray(),
            GgmlType.BF16 => System.Runtime.InteropServices.MemoryMarshal.Cast<byte, ushort>(bytes).ToArray().Select(b => BitConverter.Int32BitsToSingle(b << 16)).ToArray(),
            GgmlType.Q8_0 => Q8_0.Dequantize(bytes, t.Elements),
            _ => throw new PeftFormatException(FilePath, $"tensor '{name}': type {t.Type} is not read by this library"),
        };
    }

    static string ReadString(BinaryReader r, string path, long length)
    {
        ulong n = r.ReadUInt64();
        if (n > (ulong)(length - r.BaseStream.Position)) throw new PeftFormatException(path, $"string of {n} bytes runs past the end of the file");
        return Gguf.Utf8.GetString(r.ReadBytes((int)n));
    }

    static GgufValue ReadValue(BinaryReader r, GgufValueType type, string path, long length, string key) => type switch
    {
        GgufValueType.UInt8 => new(type, r.ReadByte()),
        GgufValueType.Int8 => new(type, r.ReadSByte()),
        GgufValueType.UInt16 => new(type, r.ReadUInt16()),
        GgufValueType.Int16 => new(type, r.ReadInt16()),
        GgufValueType.UInt32 => new(type, r.ReadUInt32()),
        GgufValueType.Int32 => new(type, r.ReadInt32()),
        GgufValueType.Float32 => new(type, r.ReadSingle()),
        GgufValueType.Bool => new(type, r.ReadByte() != 0),
        GgufValueType.String => new(type, ReadString(r, path, length)),
        GgufValueType.UInt64 => new(type, r.ReadUInt64()),
        GgufValueType.Int64 => new(type, r.ReadInt64()),
        GgufValueType.Float64 => new(type, r.ReadDouble()),
        GgufValueType.Array => ReadArray(r, path, length, key),
        _ => throw new PeftFormatException(path, $"metadata '{key}': unknown value type {(uint)type}"),
    };

    static GgufValue ReadArray(BinaryReader r, string path, long length, string key)
    {
        var element = (GgufValueType)r.ReadUInt32();
        ulong n = r.ReadUInt64();
        if (n > (ulong)(length - r.BaseStream.Position)) throw new PeftFormatException(path, $"metadata '{key}': array of {n} elements runs past the end of the file");
        switch (element)
        {
            case GgufValueType.String: return GgufValue.Strings(Enumerable.Range(0, (int)n).Select(_ => ReadString(r, path, length)).ToList());
            case GgufValueType.Float32: return GgufValue.Floats(Enumerable.Range(0, (int)n).Select(_ => r.ReadSingle()).ToList());
            case GgufValueType.Int32: return GgufValue.Ints(Enumerable.Range(0, (int)n).Select(_ => r.ReadInt32()).ToList());
            default:
                var items = new List<object>();
                for (ulong i = 0; i < n; i++) items.Add(ReadValue(r, element, path, length, key).Value);
                return new GgufValue(GgufValueType.Array, items, element);
        }
    }
}
