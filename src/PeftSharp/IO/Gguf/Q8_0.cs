using System.Runtime.InteropServices;

namespace PeftSharp.IO.Gguf;

/// <summary>
/// ggml's Q8_0 (quantize_row_q8_0_ref): per block of 32 values d = max|x| / 127 stored as fp16, codes round(x / d)
/// (halves away from zero) as int8.
/// </summary>
public static class Q8_0
{
    public static byte[] Quantize(ReadOnlySpan<float> values)
    {
        if (values.Length % Gguf.Q8BlockSize != 0) throw new ArgumentException($"Q8_0 needs a multiple of {Gguf.Q8BlockSize} values, got {values.Length}");
        int blocks = values.Length / Gguf.Q8BlockSize;
        var output = new byte[blocks * Gguf.Q8BlockBytes];
        for (int b = 0; b < blocks; b++)
        {
            var x = values.Slice(b * Gguf.Q8BlockSize, Gguf.Q8BlockSize);
            float amax = 0;
            foreach (var v in x) amax = MathF.Max(amax, MathF.Abs(v));
            float d = amax / 127f;
            float id = d != 0 ? 1f / d : 0f;
            var block = output.AsSpan(b * Gguf.Q8BlockBytes, Gguf.Q8BlockBytes);
            MemoryMarshal.Write(block, (Half)d);
            for (int j = 0; j < Gguf.Q8BlockSize; j++)
                block[2 + j] = unchecked((byte)(sbyte)MathF.Round(x[j] * id, MidpointRounding.AwayFromZero));
        }
        return output;
    }

    public static float[] Dequantize(ReadOnlySpan<byte> data, long elements)
    {
        var output = new float[elements];
        for (long b = 0; b < elements / Gguf.Q8BlockSize; b++)
        {
            var block = data.Slice((int)(b * Gguf.Q8BlockBytes), Gguf.Q8BlockBytes);
            float d = (float)MemoryMarshal.Read<Half>(block);
            for (int j = 0; j < Gguf.Q8BlockSize; j++) output[b * Gguf.Q8BlockSize + j] = d * (sbyte)block[2 + j];
        }
        return output;
    }
}
