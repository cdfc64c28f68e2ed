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
/// CPU), which moves losses by a few 1e-6 relative. As an <see cref="IOptimizer"/> it has one parameter group whose
/// lr the trainer schedules, and its state is saved by parameter name, so a resumed run continues bit for bit.
/// </summary>
public sealed class LoraFaOptimizer : IOptimizer
{
    sealed class State
    {
        public long Step;
        public Tensor? M, V;
    }

    // A is read from its layer at each step: the trainer's bf16 mode replaces frozen Linear weights after construction.
    readonly List<(LoraLinear Layer, Tensor B, double Scaling)> _pairs = new();
    readonly string _adapter;
    readonly List<Tensor> _others = new();
    readonly Dictionary<Tensor, State> _state = new(ReferenceEqualityComparer.Instance);
    readonly ParamGroup _group;

    /// <summary>The current learning rate (the single group's).</summary>
    public double Lr { get => _group.Lr; set => _group.Lr = value; }
    public double WeightDecay => _group.WeightDecay;
    public double Beta1 { get; }
    public double Beta2 { get; }
    public double Eps { get; }
    public bool CorrectBias { get; }
    /// <summary>Float32, or BFloat16 to compute g_B·pinv and the 1/s² factor in bfloat16 as peft's autocast does.</summary>
    public ScalarType ProjectionDType { get; init; } = ScalarType.Float32;

    public LoraFaOptimizer(PeftModel peft, double lr = 1e-3, double weightDecay = 0.0, double beta1 = 0.9, double beta2 = 0.999, double eps = 1e-6, bool correctBias = true, string? adapter = null)
    {
        if (lr < 0 || eps < 0 || weightDecay < 0 || beta1 is < 0 or >= 1 || beta2 is < 0 or >= 1)
            throw new PeftConfigException($"LoRA-FA optimizer: invalid lr={lr}, eps={eps}, weight_decay={weightDecay} or betas=({beta1}, {beta2})");
        adapter ??= peft.ActiveAdapter;
        LoraFa.FreezeA(peft, adapter);
        _adapter = adapter;
        (Beta1, Beta2, Eps, CorrectBias) = (beta1, beta2, eps, correctBias);
        var inPairs = new HashSet<Tensor>(ReferenceEqualityComparer.Instance);
        foreach (var (_, layer) in peft.AdapterLayers())
        {
            if (layer is not LoraLinear l || !l.Adapters.Contains(adapter)) continue;
            if (l.VariantOf(adapter) is { IsLowRank: false } v) throw new PeftConfigException($"LoRA-FA optimizer: {v.Title} adapters are not supported (peft pairs A/B positionally and would mis-pair the magnitude)");
            _pairs.Add((l, l.B(adapter), l.ScalingOf(adapter)));
            inPairs.Add(l.A(adapter));
            inPairs.Add(l.B(adapter));
        }
        var names = new Dictionary<Tensor, string>(ReferenceEqualityComparer.Instance);
        foreach (var (name, p) in peft.named_parameters())
        {
            names[p] = name;
            if (p.requires_grad && !inPairs.Contains(p)) _others.Add(p);
        }
        var ps = Parameters.Select(p => (names.TryGetValue(p, out var n) ? n : throw new PeftSharpException("LoRA-FA optimizer: a LoRA tensor is not a parameter of the model"), p)).ToList();
        _group = new ParamGroup { Name = "lora_fa", Params = ps, BaseLr = lr, WeightDecay = weightDecay, Lr = lr };
        Groups = new[] { _group };
    }

    public IReadOnlyList<ParamGroup> Groups { get; }
    /// <summary>Completed <see cref="Step"/> calls.</summary>
    public long StepCount { get; private set; }

    /// <summary>The trainable tensors (every B, then the others).</summary>
    public IEnumerable<Tensor> Parameters => _pairs.Select(p => p.B).Concat(_others);

    public void Step()
    {
        StepCount++;
        using var _ = no_grad();
        foreach (var (layer, b, s) in _pairs)
        {
            if (b.grad is not { } g) continue;
            using var scope = NewDisposeScope();
            var a = layer.A(_adapter);
            // A may be stored in bfloat16 (the trainer's bf16 mode converts frozen Linears); the inverse needs float32.
            var af = a.to(ScalarType.Float32);
            var aat = af.matmul(af.t());
            var inv = linalg.pinv(aat + 1e-8 * eye(a.shape[0], dtype: af.dtype, device: a.device));
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

    /// <summary>Drops the gradients (torch's set_to_none), so a tensor without a gradient next step is skipped.</summary>
    public void ZeroGrad()
    {
        foreach (var p in Parameters)
            if (p.grad is { } g) { g.Dispose(); p.grad = null; }
    }

    const string StepKey = "__step__";

    public void Save(string path)
    {
        var tensors = new List<KeyValuePair<string, Tensor>>();
        using var scope = NewDisposeScope();
        foreach (var (name, p) in _group.Params)
        {
            if (!_state.TryGetValue(p, out var st)) continue;
            tensors.Add(new($"exp_avg.{name}", st.M!));
            tensors.Add(new($"exp_avg_sq.{name}", st.V!));
            tensors.Add(new($"step.{name}", tensor(new[] { st.Step })));
        }
        tensors.Add(new(StepKey, tensor(new[] { StepCount })));
        IO.SafetensorsWriter.Save(path, tensors);
    }

    public void Load(string path)
    {
        using var file = IO.SafetensorsFile.Open(path);
        if (!file.Contains(StepKey)) throw new PeftFormatException(path, $"not an optimizer state file (no '{StepKey}')");
        using (var step = file.Load(StepKey)) StepCount = step.data<long>()[0];
        Clear();
        foreach (var (name, p) in _group.Params)
        {
            string mk = $"exp_avg.{name}", vk = $"exp_avg_sq.{name}", sk = $"step.{name}";
            if (!file.Contains(mk)) continue;
            if (!file.Contains(vk) || !file.Contains(sk)) throw new PeftFormatException(path, $"'{mk}' has no matching '{vk}' and '{sk}'");
            var m = file.Load(mk, p.device, p.dtype).DetachFromDisposeScope();
            var v = file.Load(vk, p.device, p.dtype).DetachFromDisposeScope();
            if (!m.shape.SequenceEqual(p.shape))
                throw new PeftFormatException(path, $"'{mk}' has shape [{string.Join(", ", m.shape)}] but the parameter has [{string.Join(", ", p.shape)}]");
            using var s = file.Load(sk);
            _state[p] = new State { Step = s.data<long>()[0], M = m, V = v };
        }
    }

    void Clear()
    {
        foreach (var st in _state.Values) { st.M?.Dispose(); st.V?.Dispose(); }
        _state.Clear();
    }

    public void Dispose() => Clear();
}
