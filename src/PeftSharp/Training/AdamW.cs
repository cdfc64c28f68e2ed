using PeftSharp.IO;
using TorchSharp;
using static TorchSharp.torch;

namespace PeftSharp.Training;

/// <summary>
/// torch.optim.AdamW (single-tensor path) in float32: p *= 1 - lr·wd; m = lerp(m, g, 1-β1); v = β2·v + (1-β2)·g²;
/// p -= lr/(1-β1ᵗ) · m / (√v/√(1-β2ᵗ) + eps). Its state is saved by parameter name in safetensors, so a resumed run
/// continues bit for bit.
/// </summary>
public sealed class AdamW : IOptimizer
{
    readonly double _beta1, _beta2, _eps;
    readonly Dictionary<string, (Tensor M, Tensor V)> _state = new();

    public AdamW(IReadOnlyList<ParamGroup> groups, double beta1 = 0.9, double beta2 = 0.999, double eps = 1e-8)
    {
        Groups = groups;
        _beta1 = beta1; _beta2 = beta2; _eps = eps;
        var dup = groups.SelectMany(g => g.Params).GroupBy(p => p.Name).FirstOrDefault(g => g.Count() > 1);
        if (dup is not null) throw new PeftSharpException($"parameter '{dup.Key}' is in two optimizer groups");
    }

    public IReadOnlyList<ParamGroup> Groups { get; }
    /// <summary>Completed optimizer steps (torch keeps one per parameter; they are always equal here).</summary>
    public long StepCount { get; private set; }

    public void Step()
    {
        StepCount++;
        double bc1 = 1 - Math.Pow(_beta1, StepCount), bc2Sqrt = Math.Sqrt(1 - Math.Pow(_beta2, StepCount));
        using var _ = no_grad();
        foreach (var g in Groups)
        {
            double stepSize = g.Lr / bc1;
            foreach (var (name, p) in g.Params)
            {
                using var scope = NewDisposeScope();
                var grad = p.grad;
                if (grad is null) continue;
                if (!_state.TryGetValue(name, out var s))
                {
                    s = (zeros_like(p).DetachFromDisposeScope(), zeros_like(p).DetachFromDisposeScope());
                    _state[name] = s;
                }
                var c = new AdamWKernel.Coefficients((float)(1 - g.Lr * g.WeightDecay), (float)(1 - _beta1), (float)_beta2, (float)(1 - _beta2), (float)bc2Sqrt, (float)_eps, (float)-stepSize);
                if (!Runtime.FastPaths.AdamW || !AdamWKernel.TryStep(p, grad, s.M, s.V, c)) Reference(p, grad, s.M, s.V, c);
            }
        }
    }

    /// <summary>The update as libtorch ops (any device or dtype; <c>PEFTSHARP_FAST_ADAMW=0</c>).</summary>
    internal static void Reference(Tensor p, Tensor grad, Tensor m, Tensor v, AdamWKernel.Coefficients c)
    {
        using var scope = NewDisposeScope();
        if (c.Decay != 1) p.mul_(c.Decay);
        m.lerp_(grad, c.LerpWeight);
        v.mul_(c.Beta2).addcmul_(grad, grad, c.OneMinusBeta2);
        var denom = (v.sqrt() / c.Bc2Sqrt).add_(c.Eps);
        p.addcdiv_(m, denom, c.NegStepSize);
    }

    public void ZeroGrad()
    {
        foreach (var g in Groups)
            foreach (var (_, p) in g.Params)
                if (p.grad is { } grad) { grad.Dispose(); p.grad = null; }
    }

    const string StepKey = "__step__";

    public void Save(string path)
    {
        var tensors = new List<KeyValuePair<string, Tensor>>();
        foreach (var (name, (m, v)) in _state)
        {
            tensors.Add(new($"exp_avg.{name}", m));
            tensors.Add(new($"exp_avg_sq.{name}", v));
        }
        using var step = tensor(new[] { StepCount });
        tensors.Add(new(StepKey, step));
        SafetensorsWriter.Save(path, tensors);
    }

    public void Load(string path)
    {
        using var file = SafetensorsFile.Open(path);
        if (!file.Contains(StepKey)) throw new PeftFormatException(path, $"not an optimizer state file (no '{StepKey}')");
        using (var step = file.Load(StepKey)) StepCount = step.data<long>()[0];
        Clear();
        foreach (var g in Groups)
            foreach (var (name, p) in g.Params)
            {
                string mk = $"exp_avg.{name}", vk = $"exp_avg_sq.{name}";
                if (!file.Contains(mk)) continue;
                if (!file.Contains(vk)) throw new PeftFormatException(path, $"'{mk}' has no matching '{vk}'");
                var m = file.Load(mk, p.device, ScalarType.Float32).DetachFromDisposeScope();
                var v = file.Load(vk, p.device, ScalarType.Float32).DetachFromDisposeScope();
                if (!m.shape.SequenceEqual(p.shape))
                    throw new PeftFormatException(path, $"'{mk}' has shape [{string.Join(", ", m.shape)}] but the parameter has [{string.Join(", ", p.shape)}]");
                _state[name] = (m, v);
            }
    }

    void Clear()
    {
        foreach (var (m, v) in _state.Values) { m.Dispose(); v.Dispose(); }
        _state.Clear();
    }

    public void Dispose() => Clear();
}
