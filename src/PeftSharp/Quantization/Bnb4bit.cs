using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using TorchSharp;
using static TorchSharp.torch;

namespace PeftSharp.Quantization;

/// <summary>
/// bitsandbytes' <c>quantize_4bit</c> / <c>dequantize_4bit</c> on TorchSharp tensors. Quantization runs on the CPU
/// (results are moved back to the weight's device); dequantization is a multi-threaded C# loop on the CPU and
/// tensor ops (code book lookups) elsewhere. Both are bit-exact with bnb's torch backend.
/// </summary>
public static class Bnb4bit
{
    /// <summary>Packs a weight of any float dtype; <c>doubleQuant</c> is bnb's <c>compress_statistics</c>.</summary>
    public static (Tensor Packed, QuantState State) Quantize(Tensor weight, QuantType type = QuantType.NF4, int blocksize = 64, bool doubleQuant = false)
    {
        if (weight.dtype is not (ScalarType.Float32 or ScalarType.BFloat16 or ScalarType.Float16))
            throw new PeftSharpException($"4-bit quantization needs a float32, bfloat16 or float16 weight (found {weight.dtype})");
        using var scope = NewDisposeScope();
        var flat = weight.detach().reshape(-1).to(ScalarType.Float32).cpu().contiguous();
        var (packed, absmax) = Blockwise.Quantize4bit(FloatSpan(flat), blocksize, type);

        (byte[], float[], float)? nested = null;
        if (doubleQuant)
        {
            // torch's own mean (its summation order), as bnb computes `absmax.mean()`.
            float offset = torch.tensor(absmax).mean().item<float>();
            var centered = new float[absmax.Length];
            for (int i = 0; i < centered.Length; i++) centered[i] = absmax[i] - offset;
            var (codes, nestedAbsmax) = Blockwise.Quantize8bit(centered, QuantState.NestedBlocksize);
            nested = (codes, nestedAbsmax, offset);
        }
        var device = weight.device;
        var state = QuantState.Create(type, blocksize, DTypeName(weight.dtype), weight.shape, absmax, nested, device);
        var packedT = torch.tensor(packed, ScalarType.Byte).reshape(packed.Length, 1);
        if (device.type != DeviceType.CPU) packedT = packedT.to(device);
        return (packedT.DetachFromDisposeScope(), state);
    }

    public static string DTypeName(ScalarType t) => t switch
    {
        ScalarType.Float32 => "float32",
        ScalarType.BFloat16 => "bfloat16",
        ScalarType.Float16 => "float16",
        _ => throw new PeftSharpException($"dtype {t} cannot be the source of a 4-bit weight"),
    };

    public static ScalarType ParseDType(string s, string where) => s switch
    {
        "float32" => ScalarType.Float32,
        "bfloat16" => ScalarType.BFloat16,
        "float16" => ScalarType.Float16,
        _ => throw new PeftConfigException($"{where}: dtype '{s}' is not supported (expected float32, bfloat16 or float16)"),
    };

    /// <summary>The weight as <paramref name="dtype"/> (float32 math, then one cast, as bnb), shape <see cref="QuantState.Shape"/>.</summary>
    public static Tensor Dequantize(Tensor packed, QuantState state, ScalarType dtype = ScalarType.Float32)
    {
        if (packed.device.type == DeviceType.CPU && dtype is ScalarType.Float32 or ScalarType.BFloat16)
        {
            var output = torch.empty(state.Shape, dtype);
            DequantizeInto(packed, state, output);
            return output;
        }
        return DequantizeWithTensorOps(packed, state, dtype);
    }

    /// <summary>Tensor-op dequantization (any device): unpack nibbles, look codes up, scale per block.</summary>
    public static Tensor DequantizeWithTensorOps(Tensor packed, QuantState state, ScalarType dtype = ScalarType.Float32)
    {
        using var scope = NewDisposeScope();
        long n = state.NumElements;
        var bytes = packed.reshape(-1).to(ScalarType.Int64);
        var codes = stack(new[] { bytes.bitwise_right_shift(4), bytes.bitwise_and(15) }, 1).reshape(-1).narrow(0, 0, n);
        var values = state.Code.index_select(0, codes);
        var absmax = state.AbsmaxFloat();
        long full = n / state.Blocksize * state.Blocksize;
        var scaled = values.narrow(0, 0, full).view(-1, state.Blocksize) * absmax.narrow(0, 0, full / state.Blocksize).unsqueeze(1);
        var y = scaled.reshape(-1);
        if (full < n) y = cat(new[] { y, values.narrow(0, full, n - full) * absmax.narrow(0, absmax.shape[0] - 1, 1) });
        return y.reshape(state.Shape).to(dtype).MoveToOuterDisposeScope();
    }

    /// <summary>
    /// CPU dequantization straight into a preallocated contiguous float32 or bfloat16 tensor of <c>numel</c> elements:
    /// per block the 16 code values are scaled once, then every byte is two table lookups. Runs on all cores.
    /// </summary>
    public static unsafe void DequantizeInto(Tensor packed, QuantState state, Tensor output)
    {
        long n = state.NumElements;
        if (packed.device.type != DeviceType.CPU || output.device.type != DeviceType.CPU)
            throw new PeftSharpException("DequantizeInto works on CPU tensors; use Dequantize for other devices");
        if (!output.is_contiguous() || output.numel() != n || output.dtype is not (ScalarType.Float32 or ScalarType.BFloat16))
            throw new PeftSharpException($"dequantize output must be a contiguous float32/bfloat16 tensor of {n} elements (found {output.dtype} [{string.Join(", ", output.shape)}])");
        if (packed.numel() != (n + 1) / 2 || packed.dtype != ScalarType.Byte)
            throw new PeftSharpException($"packed 4-bit data must be uint8 with {(n + 1) / 2} elements for shape [{string.Join(", ", state.Shape)}] (found {packed.dtype}, {packed.numel()})");
        if (n == 0) return;
        var absmax = state.AbsmaxArray();
        using var codeCpu = state.Code.cpu();
        var code = codeCpu.data<float>().ToArray();
        using var src = packed.contiguous();
        byte* p = Pointer<byte>(src);
        bool bf16 = output.dtype == ScalarType.BFloat16;
        void* o = bf16 ? Pointer<ushort>(output) : Pointer<float>(output);
        int bs = state.Blocksize, blocks = absmax.Length;
        if ((bs & 1) != 0) throw new PeftSharpException($"blocksize {bs} must be even");

        // Chunks of whole blocks, about 256 KB of output each, spread over the thread pool.
        int blocksPerChunk = Math.Max(1, (1 << 16) / bs);
        int chunks = (blocks + blocksPerChunk - 1) / blocksPerChunk;
        var run = (int c) =>
        {
            float* lut = stackalloc float[16];
            ushort* lut16 = stackalloc ushort[16];
            int b0 = c * blocksPerChunk, b1 = Math.Min(blocks, b0 + blocksPerChunk);
            for (int b = b0; b < b1; b++)
            {
                float s = absmax[b];
                for (int k = 0; k < 16; k++) lut[k] = code[k] * s;
                long start = (long)b * bs, end = Math.Min(n, start + bs);
                long pairs = (end - start) / 2;
                byte* bp = p + start / 2;
                if (bf16)
                {
                    for (int k = 0; k < 16; k++) lut16[k] = ToBFloat16(lut[k]);
                    ushort* dst = (ushort*)o + start;
                    uint* dst2 = (uint*)dst; // one little-endian store per byte: element 2j in the low half
                    for (long j = 0; j < pairs; j++) { byte v = bp[j]; dst2[j] = lut16[v >> 4] | ((uint)lut16[v & 15] << 16); }
                    if (((end - start) & 1) == 1) dst[2 * pairs] = lut16[bp[pairs] >> 4];
                }
                else
                {
                    float* dst = (float*)o + start;
                    uint* bits = (uint*)lut;
                    ulong* dst2 = (ulong*)dst;
                    for (long j = 0; j < pairs; j++) { byte v = bp[j]; dst2[j] = bits[v >> 4] | ((ulong)bits[v & 15] << 32); }
                    if (((end - start) & 1) == 1) dst[2 * pairs] = lut[bp[pairs] >> 4];
                }
            }
        };
        if (chunks == 1) run(0);
        else Parallel.For(0, chunks, run);
    }

    /// <summary>float32 → bfloat16 bits, round to nearest even (as torch's cast), NaN kept quiet.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static ushort ToBFloat16(float f)
    {
        uint u = BitConverter.SingleToUInt32Bits(f);
        if (float.IsNaN(f)) return (ushort)((u >> 16) | 0x40);
        return (ushort)((u + 0x7FFF + ((u >> 16) & 1)) >> 16);
    }

    /// <summary>The data pointer of a contiguous CPU tensor (Tensor.bytes is capped at 2 GB, so take the first element's address).</summary>
    internal static unsafe T* Pointer<T>(Tensor t) where T : unmanaged
    {
        if (t.device.type != DeviceType.CPU || !t.is_contiguous() || t.numel() == 0)
            throw new PeftSharpException("internal: raw access needs a non-empty contiguous CPU tensor");
        using var first = t.reshape(-1).narrow(0, 0, 1);
        return (T*)Unsafe.AsPointer(ref MemoryMarshal.GetReference(first.bytes));
    }

    internal static unsafe ReadOnlySpan<float> FloatSpan(Tensor t) =>
        t.numel() == 0 ? ReadOnlySpan<float>.Empty : new ReadOnlySpan<float>(Pointer<float>(t), checked((int)t.numel()));
}
