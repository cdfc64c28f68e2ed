namespace PeftSharp.Quantization;

/// <summary>
/// Blockwise absmax quantization over flat float32 data, bit-exact with bitsandbytes' torch backend
/// (<c>backends/default/ops.py</c>): a full block is scaled by <c>x * (1 / max(absmax, 1e-38))</c> and stores the
/// unclamped absmax; the partial last block is scaled by <c>x / max(absmax, 1e-38)</c> and stores the clamped one;
/// scaled values are clamped to [-1, 1] and bucketized against the code book's midpoints (ties go to the lower code).
/// </summary>
public static class Blockwise
{
    public static readonly int[] Valid4bitBlockSizes = { 32, 64, 128, 256, 512, 1024, 2048, 4096 };
    const float MinAbsmax = 1e-38f;

    public static int BlockCount(long n, int blocksize) => checked((int)((n + blocksize - 1) / blocksize));

    /// <summary>4-bit codes, two per byte (element 2i in the high nibble); an odd count is padded with the code of 0.0.</summary>
    public static (byte[] Packed, float[] Absmax) Quantize4bit(ReadOnlySpan<float> x, int blocksize, QuantType type)
    {
        if (Array.IndexOf(Valid4bitBlockSizes, blocksize) < 0)
            throw new PeftConfigException($"4-bit blocksize {blocksize} is not supported (expected one of {string.Join(", ", Valid4bitBlockSizes)})");
        var bounds = CodeBooks.BoundsOf(type);
        int n = x.Length;
        var absmax = new float[BlockCount(n, blocksize)];
        var packed = new byte[(n + 1) / 2];
        var scaled = new float[blocksize];
        for (int b = 0; b < absmax.Length; b++)
        {
            int start = b * blocksize, len = Math.Min(blocksize, n - start);
            Scale(x.Slice(start, len), scaled, len < blocksize, out absmax[b]);
            for (int i = 0; i < len; i++)
            {
                int e = start + i;
                byte c = bounds.Encode(scaled[i]);
                if ((e & 1) == 0) packed[e >> 1] = (byte)(c << 4);
                else packed[e >> 1] |= c;
            }
        }
        if ((n & 1) == 1) packed[n >> 1] |= bounds.Encode(0f);
        return (packed, absmax);
    }

    /// <summary>8-bit blockwise quantization against an ascending 256-entry code (bnb <c>quantize_blockwise</c>).</summary>
    public static (byte[] Codes, float[] Absmax) Quantize8bit(ReadOnlySpan<float> x, int blocksize, float[]? code = null)
    {
        if (blocksize <= 0) throw new PeftConfigException($"blocksize must be positive (found {blocksize})");
        var bounds = code is null ? CodeBooks.DynamicSignedBounds : CodeBooks.Midpoints(code);
        int n = x.Length;
        var absmax = new float[BlockCount(n, blocksize)];
        var q = new byte[n];
        var scaled = new float[blocksize];
        for (int b = 0; b < absmax.Length; b++)
        {
            int start = b * blocksize, len = Math.Min(blocksize, n - start);
            Scale(x.Slice(start, len), scaled, len < blocksize, out absmax[b]);
            for (int i = 0; i < len; i++) q[start + i] = (byte)CodeBooks.Bucketize(scaled[i], bounds);
        }
        return (q, absmax);
    }

    /// <summary><c>code[q] * absmax[i / blocksize]</c> in float32 (bnb <c>dequantize_blockwise</c>).</summary>
    public static float[] Dequantize8bit(ReadOnlySpan<byte> q, ReadOnlySpan<float> absmax, int blocksize, float[]? code = null)
    {
        code ??= CodeBooks.DynamicSigned;
        var y = new float[q.Length];
        for (int start = 0, b = 0; start < y.Length; start += blocksize, b++)
        {
            float s = absmax[b];
            int end = Math.Min(y.Length, start + blocksize);
            for (int i = start; i < end; i++) y[i] = code[q[i]] * s;
        }
        return y;
    }

    static void Scale(ReadOnlySpan<float> block, float[] scaled, bool partial, out float storedAbsmax)
    {
        float am = 0f;
        foreach (var v in block) am = Math.Max(am, Math.Abs(v));
        float clamped = Math.Max(am, MinAbsmax);
        if (partial)
        {
            for (int i = 0; i < block.Length; i++) scaled[i] = Math.Clamp(block[i] / clamped, -1f, 1f);
            storedAbsmax = clamped;
        }
        else
        {
            float inv = 1f / clamped;
            for (int i = 0; i < block.Length; i++) scaled[i] = Math.Clamp(block[i] * inv, -1f, 1f);
            storedAbsmax = am;
        }
    }
}
