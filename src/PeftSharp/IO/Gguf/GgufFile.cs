using System.Text;

namespace PeftSharp.IO.Gguf;

/// <summary>GGUF metadata value types (gguf.h's <c>gguf_type</c>).</summary>
public enum GgufValueType : uint
{
    UInt8 = 0, Int8 = 1, UInt16 = 2, Int16 = 3, UInt32 = 4, Int32 = 5, Float32 = 6, Bool = 7, String = 8, Array = 9,
    UInt64 = 10, Int64 = 11, Float64 = 12,
}

/// <summary>The ggml tensor types this library writes and reads (ggml.h's <c>ggml_type</c> numbers).</summary>
public enum GgmlType : uint
{
    F32 = 0,
    F16 = 1,
    Q8_0 = 8,
    BF16 = 30,
}

/// <summary>A metadata value: a scalar, a string, or an array of one element type.</summary>
public sealed record GgufValue(GgufValueType Type, object Value, GgufValueType ElementType = GgufValueType.UInt8)
{
    public static GgufValue U32(uint v) => new(GgufValueType.UInt32, v);
    public static GgufValue I32(int v) => new(GgufValueType.Int32, v);
    public static GgufValue F32(float v) => new(GgufValueType.Float32, v);
    public static GgufValue Bool(bool v) => new(GgufValueType.Bool, v);
    public static GgufValue Str(string v) => new(GgufValueType.String, v);
    public static GgufValue Strings(IReadOnlyList<string> v) => new(GgufValueType.Array, v, GgufValueType.String);
    public static GgufValue Floats(IReadOnlyList<float> v) => new(GgufValueType.Array, v, GgufValueType.Float32);
    public static GgufValue Ints(IReadOnlyList<int> v) => new(GgufValueType.Array, v, GgufValueType.Int32);

    public string AsString() => (string)Value;
    public uint AsU32() => Convert.ToUInt32(Value);
    public float AsF32() => Convert.ToSingle(Value);
    public bool AsBool() => (bool)Value;
    public IReadOnlyList<string> AsStrings() => (IReadOnlyList<string>)Value;
    public IReadOnlyList<float> AsFloats() => (IReadOnlyList<float>)Value;
    public IReadOnlyList<int> AsInts() => (IReadOnlyList<int>)Value;
}

/// <summary>
/// Format facts shared by the writer and the reader (ggml's <c>docs/gguf.md</c>): little-endian, magic "GGUF", version 3,
/// strings as a uint64 length + UTF-8 bytes, tensor dimensions innermost first (a torch [out, in] weight is
/// ne = [in, out]), tensor data offsets relative to the data section and aligned to <c>general.alignment</c> (32).
/// </summary>
public static class Gguf
{
    public const uint Magic = 0x46554747; // "GGUF" read as a little-endian uint32
    public const uint Version = 3;
    public const int DefaultAlignment = 32;
    /// <summary>Q8_0: blocks of 32 values, an fp16 scale and 32 int8 codes (34 bytes).</summary>
    public const int Q8BlockSize = 32;
    public const int Q8BlockBytes = 2 + Q8BlockSize;

    /// <summary>Bytes of a tensor of <paramref name="type"/> with <paramref name="elements"/> values (ne[0] a multiple of the block for Q8_0).</summary>
    public static long ByteSize(GgmlType type, long elements) => type switch
    {
        GgmlType.F32 => elements * 4,
        GgmlType.F16 or GgmlType.BF16 => elements * 2,
        GgmlType.Q8_0 => elements / Q8BlockSize * Q8BlockBytes,
        _ => throw new PeftFormatException(null, $"ggml type {type} is not supported"),
    };

    public static long Align(long offset, int alignment) => (offset + alignment - 1) / alignment * alignment;

    internal static readonly UTF8Encoding Utf8 = new(encoderShouldEmitUTF8Identifier: false, throwOnInvalidBytes: true);
}
