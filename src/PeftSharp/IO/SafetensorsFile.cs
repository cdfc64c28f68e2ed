using System.IO.MemoryMappedFiles;
using System.Text.Json;
using TorchSharp;
using static TorchSharp.torch;

namespace PeftSharp.IO;

/// <summary>One tensor's header entry: dtype, shape and byte range relative to the data section.</summary>
public sealed record SafetensorsEntry(string Name, string DType, ScalarType ScalarType, long[] Shape, long Begin, long End)
{
    public long NumElements => Shape.Aggregate(1L, (a, b) => a * b);
    public long ByteLength => End - Begin;
}

/// <summary>
/// A memory-mapped safetensors file. The header is fully validated on open (length, JSON, dtypes,
/// shapes vs byte sizes, offsets in range and not overlapping), so a bad file fails fast with its name
/// and the fault instead of producing garbage tensors later.
/// </summary>
public sealed class SafetensorsFile : IDisposable
{
    const long MaxHeaderBytes = 100_000_000; // the reference implementation's cap

    public string FilePath { get; }
    public IReadOnlyDictionary<string, SafetensorsEntry> Entries { get; }
    public IReadOnlyDictionary<string, string> Metadata { get; }

    readonly MemoryMappedFile? _map;
    readonly MemoryMappedViewAccessor? _view;
    readonly long _dataStart;

    SafetensorsFile(string path, Dictionary<string, SafetensorsEntry> entries, Dictionary<string, string> metadata,
        MemoryMappedFile? map, MemoryMappedViewAccessor? view, long dataStart)
    {
        FilePath = path; Entries = entries; Metadata = metadata; _map = map; _view = view; _dataStart = dataStart;
    }

    public IEnumerable<string> Keys => Entries.Keys;
    public bool Contains(string name) => Entries.ContainsKey(name);

    public static SafetensorsFile Open(string path)
    {
        if (!File.Exists(path)) throw new PeftFormatException(path, "file not found");

        Span<byte> lenBytes = stackalloc byte[8];
        byte[] headerBytes;
        long fileLen;
        // The open stream's length is the target's: cache snapshots hold symlinks, whose FileInfo.Length is the link's.
        using (var fs = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.Read))
        {
            fileLen = fs.Length;
            if (fileLen < 8) throw new PeftFormatException(path, $"not a safetensors file: {fileLen} bytes, shorter than the 8-byte header length");
            fs.ReadExactly(lenBytes);
            ulong headerLen = BitConverter.ToUInt64(lenBytes);
            if (headerLen > MaxHeaderBytes)
                throw new PeftFormatException(path, $"header length {headerLen} exceeds the {MaxHeaderBytes}-byte limit: corrupt or not safetensors");
            if (headerLen > (ulong)(fileLen - 8))
                throw new PeftFormatException(path, $"header length {headerLen} runs past the end of the file ({fileLen} bytes): truncated or not safetensors");
            headerBytes = new byte[headerLen];
            fs.ReadExactly(headerBytes);
        }
        long dataStart = 8 + headerBytes.LongLength;
        long dataLen = fileLen - dataStart;
        var (entries, metadata) = ParseHeader(path, headerBytes, dataLen);

        MemoryMappedFile? map = null; MemoryMappedViewAccessor? view = null;
        if (fileLen > 0 && entries.Values.Any(e => e.ByteLength > 0))
        {
            map = MemoryMappedFile.CreateFromFile(path, FileMode.Open, null, 0, MemoryMappedFileAccess.Read);
            view = map.CreateViewAccessor(0, 0, MemoryMappedFileAccess.Read);
        }
        return new SafetensorsFile(path, entries, metadata, map, view, dataStart);
    }

    static (Dictionary<string, SafetensorsEntry>, Dictionary<string, string>) ParseHeader(string path, byte[] header, long dataLen)
    {
        // JsonDocument decodes strings lazily, so invalid UTF-8 inside a name would surface later as InvalidOperationException.
        if (!System.Text.Unicode.Utf8.IsValid(header)) throw new PeftFormatException(path, "header is not valid UTF-8");
        JsonDocument doc;
        try { doc = JsonDocument.Parse(header); }
        catch (JsonException e) { throw new PeftFormatException(path, $"header is not valid JSON ({e.Message})"); }
        using var _ = doc;
        if (doc.RootElement.ValueKind != JsonValueKind.Object)
            throw new PeftFormatException(path, "header JSON must be an object of tensor entries");

        var entries = new Dictionary<string, SafetensorsEntry>();
        var metadata = new Dictionary<string, string>();
        foreach (var prop in doc.RootElement.EnumerateObject())
        {
            if (prop.Name == "__metadata__")
            {
                if (prop.Value.ValueKind != JsonValueKind.Object) throw new PeftFormatException(path, "__metadata__ must be an object of strings");
                foreach (var m in prop.Value.EnumerateObject())
                {
                    if (m.Value.ValueKind != JsonValueKind.String) throw new PeftFormatException(path, $"__metadata__.{m.Name} must be a string");
                    metadata[m.Name] = m.Value.GetString()!;
                }
                continue;
            }
            // JSON allows repeated keys; a second entry would silently shadow the first.
            if (!entries.TryAdd(prop.Name, ParseEntry(path, prop.Name, prop.Value, dataLen)))
                throw new PeftFormatException(path, $"tensor '{prop.Name}' appears twice in the header");
        }

        // As the safetensors library: sorted by offsets, the tensors tile the data section exactly, from 0 to its end.
        // A header length off by a few bytes shifts every tensor, which this catches instead of reading garbage.
        SafetensorsEntry? prev = null;
        long covered = 0;
        foreach (var e in entries.Values.OrderBy(e => e.Begin).ThenBy(e => e.End))
        {
            if (e.Begin < covered)
                throw new PeftFormatException(path, $"tensors '{prev!.Name}' [{prev.Begin}, {prev.End}) and '{e.Name}' [{e.Begin}, {e.End}) overlap");
            if (e.Begin > covered)
                throw new PeftFormatException(path, prev is null
                    ? $"tensor '{e.Name}' starts at byte {e.Begin} of the data section, expected 0 (offsets must be contiguous)"
                    : $"gap between tensors '{prev.Name}' (ends at byte {prev.End}) and '{e.Name}' (starts at {e.Begin}): offsets must be contiguous");
            covered = e.End;
            prev = e;
        }
        if (covered != dataLen)
            throw new PeftFormatException(path, $"the tensors cover {covered} bytes but the data section holds {dataLen} " +
                "(the header length or the file size is wrong: truncated, padded or not written by a safetensors writer)");
        return (entries, metadata);
    }

    static SafetensorsEntry ParseEntry(string path, string name, JsonElement v, long dataLen)
    {
        string Where(string field) => $"tensor '{name}': {field}";
        if (v.ValueKind != JsonValueKind.Object) throw new PeftFormatException(path, $"tensor '{name}': entry must be an object with dtype, shape, data_offsets");
        if (!v.TryGetProperty("dtype", out var dt) || dt.ValueKind != JsonValueKind.String)
            throw new PeftFormatException(path, Where("missing string field 'dtype'"));
        var dtype = dt.GetString()!;
        if (!SafetensorsDType.TryParse(dtype, out var st, out var size))
            throw new PeftFormatException(path, Where($"unknown dtype '{dtype}' (expected one of {string.Join(", ", SafetensorsDType.Names)})"));
        if (!v.TryGetProperty("shape", out var sh) || sh.ValueKind != JsonValueKind.Array)
            throw new PeftFormatException(path, Where("missing array field 'shape'"));
        var shape = new long[sh.GetArrayLength()];
        int i = 0;
        foreach (var d in sh.EnumerateArray())
        {
            if (d.ValueKind != JsonValueKind.Number || !d.TryGetInt64(out var dim) || dim < 0)
                throw new PeftFormatException(path, Where($"shape[{i}] must be a non-negative integer"));
            shape[i++] = dim;
        }
        if (!v.TryGetProperty("data_offsets", out var off) || off.ValueKind != JsonValueKind.Array || off.GetArrayLength() != 2)
            throw new PeftFormatException(path, Where("data_offsets must be an array [begin, end]"));
        var o = off.EnumerateArray().ToArray();
        // TryGetInt64 throws (not returns false) on a non-number, so check the kind first.
        if (o.Any(x => x.ValueKind != JsonValueKind.Number) || !o[0].TryGetInt64(out var begin) || !o[1].TryGetInt64(out var end))
            throw new PeftFormatException(path, Where("data_offsets must be integers"));
        if (begin < 0 || end < begin || end > dataLen)
            throw new PeftFormatException(path, Where($"data_offsets [{begin}, {end}] out of range of the {dataLen}-byte data section"));
        long numel, bytes;
        try { numel = shape.Aggregate(1L, (a, b) => checked(a * b)); bytes = checked(numel * size); }
        catch (OverflowException) { throw new PeftFormatException(path, Where($"shape [{string.Join(", ", shape)}] of {dtype} overflows a 64-bit byte count")); }
        if (bytes != end - begin)
            throw new PeftFormatException(path, Where($"shape [{string.Join(", ", shape)}] of {dtype} needs {bytes} bytes but data_offsets span {end - begin}"));
        return new SafetensorsEntry(name, dtype, st, shape, begin, end);
    }

    public SafetensorsEntry Entry(string name) =>
        Entries.TryGetValue(name, out var e) ? e : throw new PeftFormatException(FilePath, $"no tensor named '{name}'");

    /// <summary>Copies a tensor out of the mapping into a fresh CPU tensor, then moves/casts it as asked.</summary>
    public Tensor Load(string name, Device? device = null, ScalarType? dtype = null)
    {
        var e = Entry(name);
        var t = torch.empty(e.Shape, e.ScalarType);
        if (e.ByteLength > 0) CopyInto(e, t);
        if (dtype is { } d && d != t.dtype) { var c = t.to(d); t.Dispose(); t = c; }
        if (device is not null && device.type != DeviceType.CPU) { var c = t.to(device); t.Dispose(); t = c; }
        return t;
    }

    public Dictionary<string, Tensor> LoadAll(Device? device = null) =>
        Entries.Keys.ToDictionary(k => k, k => Load(k, device));

    /// <summary>The raw bytes of a tensor (for uint8 blobs such as bitsandbytes quant_state JSON).</summary>
    public byte[] ReadBytes(string name)
    {
        var e = Entry(name);
        var buf = new byte[e.ByteLength];
        if (e.ByteLength > 0) _view!.ReadArray(_dataStart + e.Begin, buf, 0, buf.Length);
        return buf;
    }

    unsafe void CopyInto(SafetensorsEntry e, Tensor dst)
    {
        // Tensor.bytes is a Span and so capped at 2 GB: copy large tensors in element-aligned chunks.
        const long chunkElems = 1L << 28;
        byte* basePtr = null;
        var handle = _view!.SafeMemoryMappedViewHandle;
        handle.AcquirePointer(ref basePtr);
        try
        {
            byte* src = basePtr + _view.PointerOffset + _dataStart + e.Begin;
            int elem = (int)(e.ByteLength / Math.Max(1, e.NumElements));
            using var flat = dst.view(-1);
            for (long start = 0; start < e.NumElements; start += chunkElems)
            {
                long n = Math.Min(chunkElems, e.NumElements - start);
                using var part = flat.narrow(0, start, n);
                new ReadOnlySpan<byte>(src + start * elem, checked((int)(n * elem))).CopyTo(part.bytes);
            }
        }
        finally { handle.ReleasePointer(); }
    }

    public void Dispose()
    {
        _view?.Dispose();
        _map?.Dispose();
    }
}
