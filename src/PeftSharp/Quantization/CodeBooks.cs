using static TorchSharp.torch;

namespace PeftSharp.Quantization;

/// <summary>The 4-bit data types bitsandbytes stores (<c>bnb_4bit_quant_type</c>).</summary>
public enum QuantType { NF4, FP4 }

public static class QuantTypes
{
    public static string Name(this QuantType t) => t == QuantType.NF4 ? "nf4" : "fp4";

    public static QuantType Parse(string s, string where = "quant_type") => s.ToLowerInvariant() switch
    {
        "nf4" => QuantType.NF4,
        "fp4" => QuantType.FP4,
        _ => throw new PeftConfigException($"{where}: '{s}' is not a 4-bit type (expected nf4 or fp4)"),
    };
}

/// <summary>
/// bitsandbytes' code books, built as <c>get_4bit_type</c> and <c>create_dynamic_map</c> build them, plus the
/// decision bounds its torch backend bucketizes against (midpoints of the sorted code book, float32).
/// </summary>
public static class CodeBooks
{
    /// <summary>NF4, index = 4-bit code (QLoRA paper's normal quantiles; ascending).</summary>
    public static readonly float[] NF4 =
    {
        -1.0f, -0.6961928009986877f, -0.5250730514526367f, -0.39491748809814453f,
        -0.28444138169288635f, -0.18477343022823334f, -0.09105003625154495f, 0.0f,
        0.07958029955625534f, 0.16093020141124725f, 0.24611230194568634f, 0.33791524171829224f,
        0.44070982933044434f, 0.5626170039176941f, 0.7229568362236023f, 1.0f,
    };

    /// <summary>FP4 (bit 3 = sign, 2 exponent bits, 1 mantissa bit), normalized by its max 12 in float32. Code 8 is +0 as in bnb.</summary>
    public static readonly float[] FP4 =
        new float[] { 0, 0.0625f, 8, 12, 4, 6, 2, 3, 0, -0.0625f, -8, -12, -4, -6, -2, -3 }.Select(v => v / 12f).ToArray();

    /// <summary><c>create_dynamic_map(signed=True)</c>: the 256-entry 8-bit map used for double quantization.</summary>
    public static readonly float[] DynamicSigned = CreateDynamicMap(signed: true);

    /// <summary><c>create_dynamic_map(signed=False)</c> (8-bit optimizer second moments).</summary>
    public static readonly float[] DynamicUnsigned = CreateDynamicMap(signed: false);

    public static float[] Of(QuantType t) => t == QuantType.NF4 ? NF4 : FP4;

    static readonly FourBitBounds Nf4Bounds = new(NF4), Fp4Bounds = new(FP4);
    internal static FourBitBounds BoundsOf(QuantType t) => t == QuantType.NF4 ? Nf4Bounds : Fp4Bounds;

    internal static readonly float[] DynamicSignedBounds = Midpoints(DynamicSigned);

    /// <summary>
    /// Dynamic exponent map: for exponent i (0..6) the midpoints of <c>linspace(0.1, 1, k)</c> scaled by 10^(i-6),
    /// with negatives when signed; then 0 and 1; sorted. Float32 arithmetic as bnb (linspace from libtorch itself).
    /// </summary>
    public static float[] CreateDynamicMap(bool signed = true, int maxExponentBits = 7, int totalBits = 8)
    {
        int nonSignBits = totalBits - 1;
        if (nonSignBits - maxExponentBits != 0)
            throw new PeftSharpException($"dynamic map with total_bits {totalBits} and max_exponent_bits {maxExponentBits} is not supported (only 8/7)");
        var data = new List<float>();
        for (int i = 0; i < maxExponentBits; i++)
        {
            int items = signed ? (1 << (i + nonSignBits - maxExponentBits)) + 1 : (1 << (i + nonSignBits - maxExponentBits + 1)) + 1;
            float[] b;
            using (var t = linspace(0.1, 1, items, ScalarType.Float32)) b = t.data<float>().ToArray();
            // Python int/float scalar times a float32 tensor: the scalar is rounded to float32 first.
            float scale = (float)Math.Pow(10, -(maxExponentBits - 1) + i);
            for (int k = 0; k + 1 < b.Length; k++)
            {
                float mean = (b[k] + b[k + 1]) / 2f;
                data.Add(scale * mean);
            }
            if (signed)
                for (int k = 0; k + 1 < b.Length; k++)
                    data.Add(-scale * ((b[k] + b[k + 1]) / 2f));
        }
        data.Add(0f);
        data.Add(1f);
        while (data.Count < 1 << totalBits) data.Add(0f);
        data.Sort();
        return data.ToArray();
    }

    internal static float[] Midpoints(float[] sorted)
    {
        var m = new float[sorted.Length - 1];
        for (int i = 0; i < m.Length; i++) m[i] = (sorted[i] + sorted[i + 1]) / 2f;
        return m;
    }

    /// <summary>Number of bounds strictly below v: torch.bucketize(v, bounds, right=False) over ascending bounds.</summary>
    internal static int Bucketize(float v, float[] bounds)
    {
        int lo = 0, hi = bounds.Length;
        while (lo < hi)
        {
            int mid = (lo + hi) >> 1;
            if (bounds[mid] < v) lo = mid + 1; else hi = mid;
        }
        return lo;
    }
}

/// <summary>
/// The 4-bit decision rule of bnb's torch backend: bucketize over the midpoints of the code book sorted by a
/// stable argsort, then map the bucket back to its code. For FP4 the two zero codes tie: values in (-0.0026, 0]
/// get code 0 and tiny positives get code 8, unlike the CUDA kernel's sign-bit rule.
/// </summary>
internal sealed class FourBitBounds
{
    public readonly float[] Bounds;
    public readonly byte[] Order;

    public FourBitBounds(float[] code)
    {
        Order = Enumerable.Range(0, code.Length).OrderBy(i => code[i]).Select(i => (byte)i).ToArray(); // OrderBy is stable
        Bounds = CodeBooks.Midpoints(Order.Select(i => code[i]).ToArray());
    }

    public byte Encode(float scaled) => Order[CodeBooks.Bucketize(scaled, Bounds)];
}
