using System.Numerics;
using PeftSharp.Quantization;
using TorchSharp;
using static TorchSharp.torch;

namespace PeftSharp.Training;

/// <summary>
/// AdamW's update of one float32 CPU parameter in one pass over p, g, m and v (.NET SIMD on the tensors' memory),
/// instead of seven libtorch kernels with a temporary each (on the 33.7M-parameter train-step model: 17 passes over
/// its weights' size become 7, and each LoRA tensor's seven dispatches one call). Per element the arithmetic is
/// <see cref="AdamW"/>'s reference ops in their order (lerp as ATen's fused multiply-add), so results agree to
/// float32 rounding. <c>PEFTSHARP_FAST_ADAMW=0</c> keeps the libtorch ops.
/// </summary>
static class AdamWKernel
{
    /// <summary>The scalars of one step (ATen computes them in float32 for float32 tensors).</summary>
    internal readonly record struct Coefficients(float Decay, float LerpWeight, float Beta2, float OneMinusBeta2, float Bc2Sqrt, float Eps, float NegStepSize);

    /// <summary>True when the four tensors are contiguous float32 CPU tensors of one size (then it has updated them).</summary>
    public static bool TryStep(Tensor p, Tensor grad, Tensor m, Tensor v, in Coefficients c)
    {
        foreach (var t in new[] { p, grad, m, v })
            if (t.device.type != DeviceType.CPU || t.dtype != ScalarType.Float32 || !t.is_contiguous()) return false;
        long n = p.numel();
        if (n == 0 || grad.numel() != n || m.numel() != n || v.numel() != n) return false;
        Update(p, grad, m, v, n, c);
        return true;
    }

    // Below this many elements one thread does it; above, torch's thread count in chunks (memory-bound: fan out).
    const long Chunk = 1 << 16;

    static unsafe void Update(Tensor p, Tensor grad, Tensor m, Tensor v, long n, Coefficients c)
    {
        float* pp = Bnb4bit.Pointer<float>(p), gp = Bnb4bit.Pointer<float>(grad), mp = Bnb4bit.Pointer<float>(m), vp = Bnb4bit.Pointer<float>(v);
        int threads = Math.Max(1, get_num_threads());
        if (threads == 1 || n <= 2 * Chunk) { Range(pp, gp, mp, vp, 0, n, c); return; }
        long chunks = (n + Chunk - 1) / Chunk;
        Parallel.For(0L, chunks, new ParallelOptions { MaxDegreeOfParallelism = threads },
            i => Range(pp, gp, mp, vp, i * Chunk, Math.Min(n, (i + 1) * Chunk), c));
    }

    static unsafe void Range(float* p, float* g, float* m, float* v, long start, long end, Coefficients c)
    {
        // ATen's lerp: weight < 0.5 ? m + w·(g − m) : g + (w − 1)·(g − m), as one fused multiply-add.
        bool small = c.LerpWeight < 0.5f;
        float coeff = small ? c.LerpWeight : c.LerpWeight - 1;
        int w = Vector<float>.Count;
        long i = start;
        if (Vector.IsHardwareAccelerated)
        {
            var decay = new Vector<float>(c.Decay); var k = new Vector<float>(coeff);
            var b2 = new Vector<float>(c.Beta2); var ob2 = new Vector<float>(c.OneMinusBeta2);
            var bc2 = new Vector<float>(c.Bc2Sqrt); var eps = new Vector<float>(c.Eps); var step = new Vector<float>(c.NegStepSize);
            for (; i + w <= end; i += w)
            {
                var pv = Vector.Load(p + i); var gv = Vector.Load(g + i); var mv = Vector.Load(m + i); var vv = Vector.Load(v + i);
                if (c.Decay != 1) pv *= decay;
                mv = Vector.FusedMultiplyAdd(k, gv - mv, small ? mv : gv);
                vv *= b2;
                vv += ob2 * gv * gv;
                var denom = Vector.SquareRoot(vv) / bc2 + eps;
                pv += step * mv / denom;
                pv.Store(p + i); mv.Store(m + i); vv.Store(v + i);
            }
        }
        for (; i < end; i++)
        {
            float pv = p[i], gv = g[i], mv = m[i], vv = v[i];
            if (c.Decay != 1) pv *= c.Decay;
            mv = MathF.FusedMultiplyAdd(coeff, gv - mv, small ? mv : gv);
            vv *= c.Beta2;
            vv += c.OneMinusBeta2 * gv * gv;
            float denom = MathF.Sqrt(vv) / c.Bc2Sqrt + c.Eps;
            pv += c.NegStepSize * mv / denom;
            p[i] = pv; m[i] = mv; v[i] = vv;
        }
    }
}
