using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;
using static TorchSharp.torch.nn;

namespace PeftSharp.Tuners.AdaLora;

/// <summary>
/// peft's adalora.SVDLinear: y = base(x) + (dropout(x)·(A ⊙ E)ᵀ·Bᵀ)·scaling/(ranknum + 1e-5) with A [r, in] (Q),
/// E [r, 1] (Λ), B [out, r] (P) (peft-spec §8.2). ranknum stays init_r when a saved adapter is loaded pruned, so
/// the scaling is unchanged; a module pruned to rank 0 keeps empty tensors.
/// </summary>
public sealed class AdaLoraLinear : LinearAdapterLayer
{
    readonly AdapterParameters lora_A = new();
    readonly AdapterParameters lora_B = new();
    readonly AdapterParameters lora_E = new();
    readonly AdapterParameters ranknum = new();
    readonly Dictionary<string, (double Scaling, double Dropout)> _settings = new();
    // The allocator's mask for a full-rank (init_r) adapter: saving prunes to it.
    readonly Dictionary<string, bool[]> _pattern = new();

    public AdaLoraLinear(Module<Tensor, Tensor> baseLayer) : base(nameof(AdaLoraLinear), baseLayer)
    {
        register_module("lora_A", lora_A);
        register_module("lora_B", lora_B);
        register_module("lora_E", lora_E);
        register_module("ranknum", ranknum);
    }

    public override string Kind => "adalora";
    public override int RankOf(string adapter) => (int)lora_A[adapter].shape[0];
    public Parameter A(string adapter) => lora_A[adapter];
    public Parameter B(string adapter) => lora_B[adapter];
    public Parameter E(string adapter) => lora_E[adapter];
    public double RankNum(string adapter) => ranknum[adapter].item<float>();

    /// <summary>Adds an adapter of rank <paramref name="r"/> (init_r, or the kept rank of a pruned adapter) with ranknum <paramref name="rankNum"/>.</summary>
    public void AddAdapter(string adapter, int r, int rankNum, double scaling, double dropout, bool init, bool trainable)
    {
        if (r < 0) throw new PeftConfigException($"AdaLoRA rank must be >= 0; got {r}");
        var device = BaseWeight.device;
        using (no_grad())
        {
            var a = zeros(r, InFeatures, device: device);
            var b = zeros(OutFeatures, r, device: device);
            var e = zeros(r, 1, device: device);
            if (init)
            {
                a.normal_(0, 0.02);
                b.normal_(0, 0.02);
            }
            lora_A.Add(adapter, new Parameter(a));
            lora_B.Add(adapter, new Parameter(b));
            lora_E.Add(adapter, new Parameter(e));
            ranknum.Add(adapter, new Parameter(full(1, (float)rankNum, device: device), requires_grad: false));
        }
        _settings[adapter] = (scaling, dropout);
        Register(adapter, trainable);
    }

    protected override IEnumerable<Parameter> TrainableTensors(string adapter)
    {
        yield return lora_A[adapter];
        yield return lora_B[adapter];
        yield return lora_E[adapter];
    }

    protected override void RemoveTensors(string adapter)
    {
        lora_A.Remove(adapter);
        lora_B.Remove(adapter);
        lora_E.Remove(adapter);
        ranknum.Remove(adapter);
        _settings.Remove(adapter);
        _pattern.Remove(adapter);
    }

    Tensor Factor(string adapter) => ranknum[adapter] + 1e-5;

    protected override Tensor AdapterOutput(string adapter, Tensor x)
    {
        var a = lora_A[adapter];
        var (scaling, dropout) = _settings[adapter];
        var xx = Dropout(x.to(a.dtype), dropout);
        return xx.matmul((a * lora_E[adapter]).t()).matmul(lora_B[adapter].t()) * scaling / Factor(adapter);
    }

    protected override Tensor DeltaOI(string adapter, ScalarType dtype) =>
        lora_B[adapter].to(dtype).matmul(lora_A[adapter].to(dtype) * lora_E[adapter].to(dtype)) * _settings[adapter].Scaling / Factor(adapter).to(dtype);

    public override (Tensor Left, Tensor Right)? DeltaFactors(string adapter) => (lora_B[adapter], lora_A[adapter] * lora_E[adapter]);

    /// <summary>Sets the kept singular values of a full-rank adapter (the allocator's rank_pattern); saving prunes to it.</summary>
    public void SetPattern(string adapter, bool[] keep)
    {
        if (keep.Length != RankOf(adapter)) throw new PeftSharpException($"rank pattern has {keep.Length} entries; the adapter has rank {RankOf(adapter)}");
        _pattern[adapter] = keep;
    }

    public override IEnumerable<(string Key, Tensor Value)> AdapterState(string adapter)
    {
        if (!Has(adapter)) yield break;
        Tensor a = lora_A[adapter], b = lora_B[adapter], e = lora_E[adapter];
        if (_pattern.TryGetValue(adapter, out var keep))
        {
            var idx = tensor(keep.Select((k, i) => (k, (long)i)).Where(p => p.k).Select(p => p.Item2).ToArray(), dtype: ScalarType.Int64, device: a.device);
            a = a.index_select(0, idx);
            e = e.index_select(0, idx);
            b = b.index_select(1, idx);
        }
        yield return ("lora_A", a);
        yield return ("lora_B", b);
        yield return ("lora_E", e);
    }

    public override bool LoadAdapterState(string adapter, string key, Tensor value)
    {
        if (!Has(adapter)) return false;
        return key switch
        {
            "lora_A" => CopyChecked(lora_A[adapter], value, key),
            "lora_B" => CopyChecked(lora_B[adapter], value, key),
            "lora_E" => CopyChecked(lora_E[adapter], value, key),
            _ => false,
        };
    }
}
