using PeftSharp.Tuners.Lora;
using TorchSharp;
using static TorchSharp.torch;

namespace PeftSharp.Tuners.LoraFa;

/// <summary>
/// LoRA-FA (Zhang et al., 2308.03303): every lora_A stays frozen at its initialization and only B is trained. The
/// result is a standard LoRA adapter (peft_type LORA). <see cref="FreezeA"/> alone is the plain v1 method;
/// <see cref="LoraFaOptimizer"/> adds v2's projected gradient (peft's create_lorafa_optimizer).
/// </summary>
public static class LoraFa
{
    /// <summary>Freezes lora_A of every LoRA layer of <paramref name="adapter"/> (default: the active one). Returns the frozen count.</summary>
    public static int FreezeA(PeftModel peft, string? adapter = null)
    {
        adapter ??= peft.ActiveAdapter;
        int n = 0;
        foreach (var (_, layer) in peft.AdapterLayers())
            if (layer is LoraLinear l && l.Adapters.Contains(adapter)) { l.A(adapter).requires_grad = false; n++; }
        if (n == 0) throw new PeftSharpException($"LoRA-FA: adapter '{adapter}' has no LoRA Linear layer (LoRA-FA needs a LoRA adapter)");
        return n;
    }
}

/// <summary>
/// peft's LoraFAOptimizer (peft-spec §6): for each LoRA layer, B's gradient is projected onto A's row space,
/// g_B' = (1/s²)·g_B·pinv(A·Aᵀ + 1e-8·I), then an Adam step on B (bias correction folded into the step size) and
/// decoupled decay B ← B − lr·wd·B after it. Any other trainable tensor gets the same Adam step on its own gradient.
/// Constructing it freezes lora_A (as create_lorafa_optimizer does). The projection product runs in float32 unless
/// <see cref="ProjectionDType"/> is BFloat16: peft computes it under bf16 autocast whenever bf16 is available (also on
/// CPU), which moves losses by a few 1e-6 relative.
/// </summary>
public sealed class LoraFaOptimizer : IDisposable
{
    sealed class State
    {
        public long Step;
        public Tensor? M, V;
    }

    readonly List<(Tensor A, Tensor B, double Scaling)> _pairs = new();
    readonly List<Tensor> _others = new();
    readonly Dictionary<Tensor, State> _state = new(ReferenceEqualityComparer.Instance);

    public double Lr { get; set; }
    public double WeightDecay { get; }
    public double Beta1 { get; }
    public double Beta2 { get; }
    public double Eps { get; }
    public bool CorrectBias { get; }
    /// <summary>Float32, or BFloat16 to compute g_B·pinv and the 1/s² factor in bfloat16 as peft's autocast does.</summary>
    public ScalarType ProjectionDType { get; init; } = ScalarType.Float32;

    public LoraFaOptimizer(PeftModel peft, double lr = 1e-3, double weightDecay = 0.0, double beta1 = 0.9, double beta2 = 0.999, double eps = 1e-6, bool correctBias = true, string? adapter = null)
    {
        if (lr < 0 || eps < 0 || beta1 is < 0 or >= 1 || beta2 is < 0 or >= 1)
            throw new PeftConfigException($"LoRA-FA optimizer: invalid lr={lr}, eps={eps} or betas=({beta1}, {beta2})");
        adapter ??= peft.ActiveAdapter;
        LoraFa.FreezeA(peft, adapter);
        (Lr, WeightDecay, Beta1, Beta2, Eps, CorrectBias) = (lr, weightDecay, beta1, beta2, eps, correctBias);
        var inPairs = new HashSet<Tensor>(ReferenceEqualityComparer.Instance);
        foreach (var (_, layer) in peft.AdapterLayers())
        {
            if (layer is not LoraLinear l || !l.Adapters.Contains(adapter)) continue;
            if (l.SettingsOf(adapter).UseDora) throw new PeftConfigException("LoRA-FA optimizer: DoRA adapters are not supported (peft pairs A/B positionally and would mis-pair the magnitude)");
            _pairs.Add((l.A(adapter), l.B(adapter), l.ScalingOf(adapter)));
            inPairs.Add(l.A(adapter));
            inPairs.Add(l.B(adapter));
        }
        foreach (var p in peft.parameters())
            if (p.requires_grad && !inPairs.Contains(p)) _others.Add(p);
    }

    /// <summary>The trainable tensors (every B, then the others).</summary>
    public IEnumerable<Tensor> Parameters => _pairs.Select(p => p.B).Concat(_others);

    public void Step()
    {
        using var _ = no_grad();
        foreach (var (a, b, s) in _pairs)
        {
            if (b.grad is not { } g) continue;
            using var scope = NewDisposeScope();
            var aat = a.matmul(a.t());
            var inv = linalg.pinv(aat + 1e-8 * eye(a.shape[0], dtype: a.dtype, device: a.device));
            var pd = ProjectionDType;
            Update(b, ((1 / (s * s)) * g.to(pd).matmul(inv.to(pd))).to(g.dtype));
        }
        foreach (var p in _others)
        {
            if (p.grad is not { } g) continue;
            using var scope = NewDisposeScope();
            Update(p, g);
        }
    }

    void Update(Tensor p, Tensor g)
    {
        if (!_state.TryGetValue(p, out var st))
            _state[p] = st = new State { M = zeros_like(p).DetachFromDisposeScope(), V = zeros_like(p).DetachFromDisposeScope() };
        st.Step++;
        st.M!.mul_(Beta1).add_(g, alpha: 1 - Beta1);
        st.V!.mul_(Beta2).addcmul_(g, g, value: 1 - Beta2);
        var denom = st.V.sqrt().add_(Eps);
        double stepSize = Lr;
        if (CorrectBias) stepSize = stepSize * Math.Sqrt(1 - Math.Pow(Beta2, st.Step)) / (1 - Math.Pow(Beta1, st.Step));
        p.addcdiv_(st.M, denom, value: -stepSize);
        if (WeightDecay > 0) p.add_(p, alpha: -Lr * WeightDecay);
    }

    public void ZeroGrad()
    {
        foreach (var p in Parameters) p.grad?.zero_();
    }

    public void Dispose()
    {
        foreach (var st in _state.Values) { st.M?.Dispose(); st.V?.Dispose(); }
        _state.Clear();
    }
}
