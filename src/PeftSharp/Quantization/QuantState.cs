using System.Text;
using System.Text.Json;
using TorchSharp;
using static TorchSharp.torch;

namespace PeftSharp.Quantization;

/// <summary>
/// bitsandbytes' <c>QuantState</c> of one 4-bit weight: block scales, code book, and (with double quantization)
/// the 8-bit codes of <c>absmax - offset</c> with their own fp32 scales per 256 blocks. Tensors live on the
/// weight's device; the non-tensor fields travel as the JSON blob <c>quant_state.bitsandbytes__nf4|fp4</c>.
/// </summary>
public sealed class QuantState : IDisposable
{
    public const int NestedBlocksize = 256;

    public QuantType QuantType { get; }
    public int Blocksize { get; }
    /// <summary>The weight's dtype before quantization, as bnb writes it ("float32", "bfloat16", "float16").</summary>
    public string DType { get; }
    public long[] Shape { get; }
    /// <summary>float32 [blocks], or uint8 [blocks] when nested.</summary>
    public Tensor Absmax { get; private set; }
    /// <summary>float32 [16] (<c>quant_map</c>).</summary>
    public Tensor Code { get; private set; }
    public bool Nested => NestedAbsmax is not null;
    public Tensor? NestedAbsmax { get; private set; }
    public Tensor? NestedCode { get; private set; }
    public float NestedOffset { get; }
    public int NestedBlocksizeValue { get; }
    /// <summary>UTF-8 JSON of the non-tensor fields, exactly as stored (kept as read so a loaded file re-saves byte for byte).</summary>
    public Tensor JsonBlob { get; private set; }

    public long NumElements => Shape.Aggregate(1L, (a, b) => a * b);
    public int Blocks => Blockwise.BlockCount(NumElements, Blocksize);
    public string BlobKey => "quant_state.bitsandbytes__" + QuantType.Name();

    QuantState(QuantType type, int blocksize, string dtype, long[] shape, Tensor absmax, Tensor code,
        Tensor? nestedAbsmax, Tensor? nestedCode, float offset, int nestedBlocksize, Tensor? blob)
    {
        QuantType = type; Blocksize = blocksize; DType = dtype; Shape = shape; Absmax = absmax; Code = code;
        NestedAbsmax = nestedAbsmax; NestedCode = nestedCode; NestedOffset = offset; NestedBlocksizeValue = nestedBlocksize;
        JsonBlob = blob ?? torch.tensor(Encoding.UTF8.GetBytes(ToJson()), ScalarType.Byte);
        foreach (var t in Tensors()) t.DetachFromDisposeScope();
    }

    /// <summary>A state built from quantization results (CPU arrays); tensors are placed on <paramref name="device"/>.</summary>
    internal static QuantState Create(QuantType type, int blocksize, string dtype, long[] shape, float[] absmax,
        (byte[] Codes, float[] Absmax, float Offset)? nested, Device? device)
    {
        Tensor On(Tensor t) => device is null || device.type == DeviceType.CPU ? t : t.to(device);
        var code = On(torch.tensor(CodeBooks.Of(type)));
        if (nested is { } n)
            return new QuantState(type, blocksize, dtype, shape, On(torch.tensor(n.Codes, ScalarType.Byte)), code,
                On(torch.tensor(n.Absmax)), On(torch.tensor(CodeBooks.DynamicSigned)), n.Offset, NestedBlocksize, null);
        return new QuantState(type, blocksize, dtype, shape, On(torch.tensor(absmax)), code, null, null, 0f, 0, null);
    }

    string ToJson()
    {
        var fields = new List<KeyValuePair<string, object>>
        {
            new("quant_type", QuantType.Name()), new("blocksize", Blocksize), new("dtype", DType), new("shape", Shape),
        };
        if (Nested)
        {
            fields.Add(new("nested_blocksize", NestedBlocksizeValue));
            fields.Add(new("nested_dtype", "float32"));
            fields.Add(new("nested_offset", (double)NestedOffset));
        }
        return PyJson.Dumps(fields);
    }

    /// <summary>The entries bnb's <c>QuantState.as_dict(packed=True)</c> saves next to <c>P.weight</c>, keyed by suffix (e.g. "absmax").</summary>
    public IEnumerable<(string Suffix, Tensor Tensor)> StateDictEntries()
    {
        yield return ("absmax", Absmax);
        yield return ("quant_map", Code);
        if (Nested)
        {
            yield return ("nested_absmax", NestedAbsmax!);
            yield return ("nested_quant_map", NestedCode!);
        }
        yield return (BlobKey, JsonBlob);
    }

    IEnumerable<Tensor> Tensors() => StateDictEntries().Select(e => e.Tensor);

    /// <summary>
    /// Reads a state saved by bitsandbytes/transformers (<c>QuantState.from_dict</c> rules): <paramref name="read"/> gives
    /// the tensor stored under a suffix (absmax, quant_map, ..., or the blob key) or null when absent.
    /// Shapes and dtypes are checked so a foreign or damaged file fails here, naming <paramref name="where"/>.
    /// </summary>
    public static QuantState FromStored(string where, Func<string, Tensor?> read, Device? device = null)
    {
        Tensor? nf4Blob = read("quant_state.bitsandbytes__nf4");
        Tensor? fp4Blob = read("quant_state.bitsandbytes__fp4");
        if ((nf4Blob is null) == (fp4Blob is null))
            throw new PeftFormatException(where, "expected exactly one of quant_state.bitsandbytes__nf4 / __fp4");
        var blob = nf4Blob ?? fp4Blob!;
        if (blob.dtype != ScalarType.Byte || blob.dim() != 1) throw new PeftFormatException(where, "quant_state blob must be a 1-D uint8 tensor");
        var json = Encoding.UTF8.GetString(blob.cpu().bytes);
        JsonElement root;
        try { root = JsonDocument.Parse(json).RootElement; }
        catch (JsonException e) { throw new PeftFormatException(where, $"quant_state JSON is invalid ({e.Message}): {json}"); }

        string Str(string k) => root.TryGetProperty(k, out var v) && v.ValueKind == JsonValueKind.String ? v.GetString()!
            : throw new PeftFormatException(where, $"quant_state JSON lacks string '{k}': {json}");
        int Int(string k) => root.TryGetProperty(k, out var v) && v.TryGetInt32(out var i) ? i
            : throw new PeftFormatException(where, $"quant_state JSON lacks integer '{k}': {json}");

        var type = QuantTypes.Parse(Str("quant_type"), $"{where}: quant_type");
        if ((fp4Blob is not null) != (type == QuantType.FP4)) throw new PeftFormatException(where, $"quant_state key does not match quant_type '{type.Name()}'");
        int blocksize = Int("blocksize");
        if (blocksize <= 0) throw new PeftFormatException(where, $"blocksize {blocksize} must be positive");
        if (!root.TryGetProperty("shape", out var sh) || sh.ValueKind != JsonValueKind.Array)
            throw new PeftFormatException(where, $"quant_state JSON lacks 'shape': {json}");
        var shape = sh.EnumerateArray().Select(x => x.GetInt64()).ToArray();
        var dtype = Str("dtype");
        long numel = shape.Aggregate(1L, (a, b) => a * b);
        int blocks = Blockwise.BlockCount(numel, blocksize);

        Tensor Need(string k) => read(k) ?? throw new PeftFormatException(where, $"missing quant state tensor '{k}'");
        void Check(string k, Tensor t, ScalarType dt, long len)
        {
            if (t.dtype != dt || t.dim() != 1 || t.shape[0] != len)
                throw new PeftFormatException(where, $"'{k}' should be {dt} [{len}], found {t.dtype} [{string.Join(", ", t.shape)}]");
        }
        Tensor Dev(Tensor t) => device is null ? t : t.to(device);

        var absmax = Need("absmax");
        var code = Need("quant_map");
        Check("quant_map", code, ScalarType.Float32, 16);
        var nestedAbsmax = read("nested_absmax");
        if (nestedAbsmax is null)
        {
            Check("absmax", absmax, ScalarType.Float32, blocks);
            return new QuantState(type, blocksize, dtype, shape, Dev(absmax), Dev(code), null, null, 0f, 0, blob);
        }
        int nestedBs = Int("nested_blocksize");
        if (nestedBs <= 0) throw new PeftFormatException(where, $"nested_blocksize {nestedBs} must be positive");
        var nDtype = Str("nested_dtype");
        if (nDtype != "float32") throw new PeftFormatException(where, $"nested_dtype '{nDtype}' is not supported (expected float32)");
        if (!root.TryGetProperty("nested_offset", out var off) || off.ValueKind != JsonValueKind.Number)
            throw new PeftFormatException(where, $"quant_state JSON lacks 'nested_offset': {json}");
        var nestedCode = Need("nested_quant_map");
        Check("absmax", absmax, ScalarType.Byte, blocks);
        Check("nested_absmax", nestedAbsmax, ScalarType.Float32, Blockwise.BlockCount(blocks, nestedBs));
        Check("nested_quant_map", nestedCode, ScalarType.Float32, 256);
        // bnb reads the offset with torch.tensor(float(...)): float32.
        return new QuantState(type, blocksize, dtype, shape, Dev(absmax), Dev(code), Dev(nestedAbsmax), Dev(nestedCode),
            (float)off.GetDouble(), nestedBs, blob);
    }

    /// <summary>The per-block float32 scales (rebuilds them from the 8-bit codes when nested), on the state's device.</summary>
    public Tensor AbsmaxFloat()
    {
        if (!Nested) return Absmax.alias();
        using var scope = NewDisposeScope();
        var q = Absmax.to(ScalarType.Int64);
        var scale = NestedAbsmax!.repeat_interleave(NestedBlocksizeValue).narrow(0, 0, Absmax.shape[0]);
        var a = NestedCode!.index_select(0, q) * scale + NestedOffset;
        return a.MoveToOuterDisposeScope();
    }

    /// <summary>Same as <see cref="AbsmaxFloat"/> as a CPU array (bnb: <c>nested_code[q] * nested_absmax[j / 256] + offset</c>).</summary>
    public float[] AbsmaxArray()
    {
        if (!Nested)
        {
            using var c = Absmax.cpu();
            return c.data<float>().ToArray();
        }
        using var q = Absmax.cpu();
        using var na = NestedAbsmax!.cpu();
        using var nc = NestedCode!.cpu();
        var y = Blockwise.Dequantize8bit(q.bytes, na.data<float>().ToArray(), NestedBlocksizeValue, nc.data<float>().ToArray());
        for (int i = 0; i < y.Length; i++) y[i] += NestedOffset;
        return y;
    }

    /// <summary>Moves the tensors to a device (dtypes never change: the scales stay float32).</summary>
    public void To(Device device)
    {
        Tensor Move(Tensor t)
        {
            if (t.device.type == device.type && t.device.index == device.index) return t;
            var m = t.to(device).DetachFromDisposeScope();
            t.Dispose();
            return m;
        }
        Absmax = Move(Absmax);
        Code = Move(Code);
        if (Nested) { NestedAbsmax = Move(NestedAbsmax!); NestedCode = Move(NestedCode!); }
        JsonBlob = Move(JsonBlob);
    }

    public void Dispose()
    {
        foreach (var t in Tensors()) t.Dispose();
    }
}
