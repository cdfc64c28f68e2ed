using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;
using static TorchSharp.torch.nn;

namespace PeftSharp.Tuners.DeltaLora;

/// <summary>
/// A Delta-LoRA layer. While training, the base weight W itself is updated by <see cref="DeltaLoraUpdater"/> (it
/// gets no gradient and no optimizer state) and the forward is LoRA's: W·x + s·B(A·x). The adapter as saved holds
/// the final A, B and the snapshot (A_K, B_K) taken before step K; because the W updates telescope,
/// W_T = W_0 + λ·s·(B_T·A_T − B_K·A_K), so on an untouched base the layer adds that term (<see cref="Folded"/> false).
/// </summary>
public sealed class DeltaLoraLinear : LinearAdapterLayer
{
    readonly AdapterModules<Linear> lora_A = new();
    readonly AdapterModules<Linear> lora_B = new();
    readonly Dictionary<string, (double Scaling, double Ratio, int R)> _settings = new();
    readonly Dictionary<string, (Tensor A, Tensor B)> _start = new();
    readonly HashSet<string> _folded = new();

    public DeltaLoraLinear(Module<Tensor, Tensor> baseLayer) : base(nameof(DeltaLoraLinear), baseLayer)
    {
        register_module("lora_A", lora_A);
        register_module("lora_B", lora_B);
    }

    public override string Kind => "delta_lora";
    public override int RankOf(string adapter) => _settings[adapter].R;
    public Tensor A(string adapter) => lora_A[adapter].weight!;
    public Tensor B(string adapter) => lora_B[adapter].weight!;
    public double Scaling(string adapter) => _settings[adapter].Scaling;
    public double UpdateRatio(string adapter) => _settings[adapter].Ratio;
    public (Tensor A, Tensor B) StartSnapshot(string adapter) => _start[adapter];

    /// <summary>True while the base weight already contains the adapter's W updates (during and after training in this process).</summary>
    public bool Folded(string adapter) => _folded.Contains(adapter);

    public void AddAdapter(string adapter, int r, double scaling, double ratio, bool trainable)
    {
        var device = BaseWeight.device;
        var a = nn.Linear(InFeatures, r, hasBias: false, device: device, dtype: ScalarType.Float32);
        var b = nn.Linear(r, OutFeatures, hasBias: false, device: device, dtype: ScalarType.Float32);
        using (no_grad())
        {
            nn.init.kaiming_uniform_(a.weight!, Math.Sqrt(5));
            b.weight!.zero_();
        }
        lora_A.Add(adapter, a);
        lora_B.Add(adapter, b);
        _settings[adapter] = (scaling, ratio, r);
        _start[adapter] = (a.weight!.detach().clone().DetachFromDisposeScope(), b.weight!.detach().clone().DetachFromDisposeScope());
        Register(adapter, trainable);
    }

    /// <summary>Marks the base weight as carrying the W updates from now on (the updater does this when training starts).</summary>
    internal void BeginFolding(string adapter) => _folded.Add(adapter);

    /// <summary>Records (A, B) as the snapshot the telescoped W update starts from.</summary>
    internal void SetStartSnapshot(string adapter, Tensor a, Tensor b)
    {
        using var _ = no_grad();
        _start[adapter].A.copy_(a);
        _start[adapter].B.copy_(b);
    }

    /// <summary>W += λ·s·(B·A − B_prev·A_prev), in place (the W step of Delta-LoRA).</summary>
    internal void FoldUpdate(string adapter, Tensor prevA, Tensor prevB) => FoldDifference(adapter, A(adapter), B(adapter), prevA, prevB);

    /// <summary>W += λ·s·(B₁·A₁ − B₀·A₀), in place.</summary>
    internal void FoldDifference(string adapter, Tensor a1, Tensor b1, Tensor a0, Tensor b0)
    {
        using var _ = no_grad();
        using var scope = NewDisposeScope();
        var (s, ratio, _) = _settings[adapter];
        var d = (b1.matmul(a1) - b0.matmul(a0)) * (ratio * s);
        var w = BaseWeight;
        w.add_((FanInFanOut ? d.t() : d).to(w.dtype));
    }

    protected override IEnumerable<Parameter> TrainableTensors(string adapter)
    {
        yield return lora_A[adapter].weight!;
        yield return lora_B[adapter].weight!;
    }

    protected override void RemoveTensors(string adapter)
    {
        lora_A.Remove(adapter);
        lora_B.Remove(adapter);
        _settings.Remove(adapter);
        if (_start.Remove(adapter, out var st)) { st.A.Dispose(); st.B.Dispose(); }
        _folded.Remove(adapter);
    }

    // λ·s·(B·A − B_K·A_K): the part of W_T − W_0 the base weight holds once folded.
    Tensor Telescoped(string adapter, ScalarType dtype)
    {
        var (s, ratio, _) = _settings[adapter];
        var (a0, b0) = _start[adapter];
        return (B(adapter).to(dtype).matmul(A(adapter).to(dtype)) - b0.to(dtype).matmul(a0.to(dtype))) * (ratio * s);
    }

    protected override Tensor AdapterOutput(string adapter, Tensor x)
    {
        var xa = x.to(A(adapter).dtype);
        var y = lora_B[adapter].call(lora_A[adapter].call(xa)) * _settings[adapter].Scaling;
        if (!_folded.Contains(adapter)) y = y + nn.functional.linear(xa, Telescoped(adapter, xa.dtype).detach());
        return y;
    }

    Tensor LoraDelta(string adapter, ScalarType dtype) => B(adapter).to(dtype).matmul(A(adapter).to(dtype)) * _settings[adapter].Scaling;

    /// <summary>Merged − original weight: s·B·A + λ·s·(B·A − B_K·A_K), folded or not.</summary>
    protected override Tensor DeltaOI(string adapter, ScalarType dtype) => LoraDelta(adapter, dtype) + Telescoped(adapter, dtype);

    protected override Tensor MergeDeltaOI(string adapter, ScalarType dtype) =>
        _folded.Contains(adapter) ? LoraDelta(adapter, dtype) : DeltaOI(adapter, dtype);

    public override IEnumerable<(string Key, Tensor Value)> AdapterState(string adapter)
    {
        if (!Has(adapter)) yield break;
        yield return ("lora_A.weight", A(adapter));
        yield return ("lora_B.weight", B(adapter));
        yield return ("delta_lora_start_A", _start[adapter].A);
        yield return ("delta_lora_start_B", _start[adapter].B);
    }

    public override bool LoadAdapterState(string adapter, string key, Tensor value)
    {
        if (!Has(adapter)) return false;
        return key switch
        {
            "lora_A.weight" => CopyChecked(A(adapter), value, key),
            "lora_B.weight" => CopyChecked(B(adapter), value, key),
            "delta_lora_start_A" => CopyChecked(_start[adapter].A, value, key),
            "delta_lora_start_B" => CopyChecked(_start[adapter].B, value, key),
            _ => false,
        };
    }
}
