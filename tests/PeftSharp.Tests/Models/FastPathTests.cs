using PeftSharp.Models;
using PeftSharp.Training;
using static TorchSharp.torch;

namespace PeftSharp.Tests.Models;

/// <summary>Each step-time fast path (issue 18) against the unfused form it replaces, values and gradients.</summary>
public class FastPathTests
{
    [Theory]
    [InlineData(ScalarType.Float32, 0.0)]
    [InlineData(ScalarType.BFloat16, 0.02)]
    public void Rope_rotate_matches_x_cos_plus_rotate_half_sin(ScalarType dtype, double tolerance)
    {
        manual_seed(7);
        using var x32 = randn(2, 3, 5, 8);
        using var cos32 = randn(2, 1, 5, 8);
        using var sin32 = randn(2, 1, 5, 8);
        using var x = x32.to(dtype).requires_grad_(true);
        using var cos = cos32.to(dtype);
        using var sin = sin32.to(dtype);
        using var reference = x * cos + Rope.RotateHalf(x) * sin;
        using var fast = Rope.Rotate(x, cos, sin);
        using var weights = randn(2, 3, 5, 8).to(dtype);
        var gRef = autograd.grad(new[] { (reference * weights).sum() }, new[] { x })[0];
        var gFast = autograd.grad(new[] { (fast * weights).sum() }, new[] { x })[0];
        // float32: the same products and sums; FMA contraction in libtorch's kernels may move the last bit.
        double tol = dtype == ScalarType.Float32 ? 1e-6 : tolerance;
        Assert.True(fast.to(ScalarType.Float32).allclose(reference.to(ScalarType.Float32), rtol: tol, atol: tol),
            $"max diff {(fast - reference).abs().max().to(ScalarType.Float32).item<float>()}");
        Assert.True(gFast.to(ScalarType.Float32).allclose(gRef.to(ScalarType.Float32), rtol: tol, atol: tol),
            $"grad max diff {(gFast - gRef).abs().max().to(ScalarType.Float32).item<float>()}");
    }

    [Theory]
    [InlineData(0.0, 0.9)]
    [InlineData(0.01, 0.9)]
    [InlineData(0.1, 0.3)]   // beta1 < 0.5: ATen's lerp takes its other branch
    public void AdamW_kernel_matches_the_libtorch_ops_over_several_steps(double weightDecay, double beta1)
    {
        manual_seed(11);
        // Odd sizes: a SIMD body and a scalar tail; 300k elements: the multi-threaded split.
        foreach (long n in new long[] { 37, 300_001 })
        {
            using var p0 = randn(n);
            using var pRef = p0.clone(); using var mRef = zeros(n); using var vRef = zeros(n);
            using var pFast = p0.clone(); using var mFast = zeros(n); using var vFast = zeros(n);
            for (int step = 1; step <= 4; step++)
            {
                using var grad = randn(n) * (step * 0.1);
                double lr = 1e-3, bc1 = 1 - Math.Pow(beta1, step), bc2Sqrt = Math.Sqrt(1 - Math.Pow(0.999, step));
                var c = new AdamWKernel.Coefficients((float)(1 - lr * weightDecay), (float)(1 - beta1), 0.999f, (float)(1 - 0.999), (float)bc2Sqrt, 1e-8f, (float)(-lr / bc1));
                AdamW.Reference(pRef, grad, mRef, vRef, c);
                Assert.True(AdamWKernel.TryStep(pFast, grad, mFast, vFast, c));
            }
            foreach (var (fast, reference, name) in new[] { (pFast, pRef, "p"), (mFast, mRef, "m"), (vFast, vRef, "v") })
                Assert.True(fast.allclose(reference, rtol: 1e-6, atol: 1e-9), $"{name} (n={n}): max diff {(fast - reference).abs().max().item<float>()}");
            // Not the kernel's case: left to the libtorch ops.
            using var half = p0.to(ScalarType.BFloat16);
            Assert.False(AdamWKernel.TryStep(half, half, half, half, default));
        }
    }
}
