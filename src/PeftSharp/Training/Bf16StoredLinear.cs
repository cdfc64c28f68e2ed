using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace PeftSharp.Training;

/// <summary>
/// bf16 storage with float32 arithmetic for a frozen <see cref="Linear"/>, for CPUs without native bf16 (see
/// <see cref="Runtime.Bf16Policy"/>). The module stays a plain Linear with a bfloat16 weight, so merging, saving and
/// every <c>is Linear</c> check see what they saw before; two hooks route its forward through
/// <see cref="WidenedLinear"/>, which widens the weight for the matmul and, for backward, keeps only the bfloat16
/// weight and widens it again (autograd keeping the float32 copies of every layer would cost the memory bf16 saves).
/// </summary>
public static class Bf16StoredLinear
{
    /// <summary>Stores <paramref name="linear"/>'s (frozen) weight and bias in bfloat16 and makes it compute in float32.</summary>
    public static void Attach(Linear linear)
    {
        linear.to(ScalarType.BFloat16);
        Tensor? pending = null;
        // Linear itself then multiplies an empty batch (its dtype checks pass, no work); the real input is kept aside
        // and the output hook computes from it.
        var nothing = empty(0, linear.in_features, dtype: ScalarType.BFloat16).DetachFromDisposeScope();
        linear.register_forward_pre_hook((_, x) => { pending = x; return nothing; });
        linear.register_forward_hook((m, _, _) =>
        {
            var x = pending ?? throw new InvalidOperationException("Bf16StoredLinear: output hook without input");
            pending = null;
            var l = (Linear)m;
            return Compute(x, l.weight!, l.bias);
        });
    }

    /// <summary>x·Wᵀ + b in x's floating dtype (float32 unless x is wider or narrower) from a stored bfloat16 W.</summary>
    public static Tensor Compute(Tensor x, Tensor weight, Tensor? bias)
    {
        if (!x.is_floating_point() || x.dtype == ScalarType.BFloat16) x = x.to(ScalarType.Float32);
        if (!is_grad_enabled() || !x.requires_grad) return Plain(x, weight, bias);
        var y = bias is null ? WidenedLinear.apply(x, weight) : WidenedLinear.apply(x, weight, bias);
        CustomFunctionMemory.Release();
        return y;
    }

    static Tensor Plain(Tensor x, Tensor weight, Tensor? bias)
    {
        using var w = Widen(weight, x.dtype);
        using var b = bias?.to(x.dtype);
        return nn.functional.linear(x, w, b);
    }

    // One widening buffer per thread, as large as the largest weight seen, that every layer widens into: a fresh
    // float32 copy per matmul cost page faults and left holes in the heap. Only the trainer's thread widens, one
    // matmul at a time, and the view never outlives that matmul. libtorch's copy_ widens on OpenMP's threads, the
    // ones MKL then reads the weight with; a .NET SIMD shift on one thread, or split over .NET's pool, was slower at
    // both 1×32 and 4×256 tokens (docs/benchmarks.md).
    [ThreadStatic] static Tensor? _wide;

    /// <summary>A float32 (or <paramref name="dtype"/>) view of <paramref name="weight"/>, valid until the next call on this thread.</summary>
    static Tensor Widen(Tensor weight, ScalarType dtype)
    {
        long n = weight.numel();
        if (_wide is null || _wide.numel() < n || _wide.dtype != dtype)
        {
            _wide?.Dispose();
            _wide = empty(n, dtype: dtype).DetachFromDisposeScope();
        }
        using var _ = no_grad();
        using var flat = _wide.narrow(0, 0, n);
        return flat.view(weight.shape).copy_(weight);
    }

    /// <summary>y = x·widen(W)ᵀ + widen(b); backward gives dx = dy·widen(W) only (W and b are frozen).</summary>
    sealed class WidenedLinear : autograd.SingleTensorFunction<WidenedLinear>
    {
        public override string Name => nameof(WidenedLinear);

        public override Tensor forward(autograd.AutogradContext ctx, params object[] vars)
        {
            var x = (Tensor)vars[0];
            var w = (Tensor)vars[1];
            ctx.save_for_backward(new List<Tensor> { w });
            CustomFunctionMemory.Track(ctx);
            ctx.save_data("inputs", vars.Length);
            // Without no_grad the inner linear would record its own graph node and keep the float32 weight alive.
            using var _ = no_grad();
            return Plain(x, w, vars.Length > 2 ? (Tensor)vars[2] : null);
        }

        public override List<Tensor> backward(autograd.AutogradContext ctx, Tensor gradOutput)
        {
            var w = ctx.get_saved_variables()[0];
            using var wide = Widen(w, gradOutput.dtype);
            var grads = new List<Tensor> { gradOutput.matmul(wide) };
            for (int i = 1; i < (int)ctx.get_data("inputs"); i++) grads.Add(null!);
            return grads;
        }
    }
}
