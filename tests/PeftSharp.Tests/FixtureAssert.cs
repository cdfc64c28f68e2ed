using TorchSharp;
using static TorchSharp.torch;

namespace PeftSharp.Tests;

public static class FixtureAssert
{
    /// <summary>Max |a-b| over positions where mask==1 (mask [B,T] broadcast over trailing dims; null = everywhere).</summary>
    public static double MaxAbsDiff(Tensor actual, Tensor expected, Tensor? mask = null)
    {
        Assert.Equal(expected.shape, actual.shape);
        using var scope = NewDisposeScope();
        var diff = (actual.to(ScalarType.Float64) - expected.to(ScalarType.Float64)).abs();
        if (mask is not null)
        {
            var m = mask.to(ScalarType.Bool);
            while (m.dim() < diff.dim()) m = m.unsqueeze(-1);
            diff = diff.masked_fill(m.logical_not(), 0);
        }
        return diff.max().item<double>();
    }

    public static void Close(Tensor actual, Tensor expected, Tensor? mask = null, double atol = 1e-4, string what = "values")
    {
        var d = MaxAbsDiff(actual, expected, mask);
        Assert.True(d <= atol, $"{what}: max abs diff {d:E3} > {atol:E1}");
    }
}
