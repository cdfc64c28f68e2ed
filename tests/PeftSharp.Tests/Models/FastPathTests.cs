using PeftSharp.Models;
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
}
