using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;
using static TorchSharp.torch.nn;

namespace PeftSharp.Tuners.Vera;

/// <summary>
/// The frozen random projections of one VeRA adapter, shared by reference by every wrapped layer (peft's
/// <c>VeraModel.vera_A/vera_B</c>): A [r, max_in], B [max_out, r]. Never a registered module tensor, so it is stored once.
/// </summary>
public sealed class VeraProjections
{
    public Tensor A { get; private set; }
    public Tensor B { get; private set; }
    public long Seed { get; }

    public VeraProjections(Tensor a, Tensor b, long seed)
    {
        A = a.DetachFromDisposeScope();
        B = b.DetachFromDisposeScope();
        Seed = seed;
    }

    /// <summary>
    /// peft's _kaiming_init on a CPU generator seeded with <paramref name="seed"/>: A first, then B, each
    /// U(−√(6/fan_in), √(6/fan_in)) with fan_in = size(1). TorchSharp's generator is libtorch's, so the draws are peft's.
    /// </summary>
    public static VeraProjections Generate(int r, long maxIn, long maxOut, long seed, Device device)
    {
        using var gen = new Generator((ulong)seed, CPU);
        var a = empty(r, maxIn, dtype: ScalarType.Float32);
        var b = empty(maxOut, r, dtype: ScalarType.Float32);
        using (no_grad())
        {
            double boundA = Math.Sqrt(6.0 / maxIn), boundB = Math.Sqrt(6.0 / r);
            a.uniform_(-boundA, boundA, gen);
            b.uniform_(-boundB, boundB, gen);
        }
        return new VeraProjections(a.to(device), b.to(device), seed);
    }

    /// <summary>Keeps the projections on the device the layer computes on.</summary>
    internal void EnsureOn(Device device)
    {
        if (A.device == device) return;
        A = A.to(device).DetachFromDisposeScope();
        B = B.to(device).DetachFromDisposeScope();
    }
}

/// <summary>
/// peft's vera.Linear: y = base(x) + λ_b ⊙ (B_s · (λ_d ⊙ (A_s · dropout(x)))) with A_s = vera_A[:, :in],
/// B_s = vera_B[:out, :] (peft-spec §7). Only λ_d [r] and λ_b [out] are per layer and trainable.
/// </summary>
public sealed class VeraLinear : LinearAdapterLayer
{
    readonly AdapterParameters vera_lambda_b = new();
    readonly AdapterParameters vera_lambda_d = new();
    readonly Dictionary<string, (VeraProjections P, int R, double Dropout)> _settings = new();

    public VeraLinear(Module<Tensor, Tensor> baseLayer) : base(nameof(VeraLinear), baseLayer)
    {
        register_module("vera_lambda_b", vera_lambda_b);
        register_module("vera_lambda_d", vera_lambda_d);
    }

    public override string Kind => "vera";
    public override int RankOf(string adapter) => _settings[adapter].R;
    public Tensor LambdaB(string adapter) => vera_lambda_b[adapter];
    public Tensor LambdaD(string adapter) => vera_lambda_d[adapter];
    public VeraProjections Projections(string adapter) => _settings[adapter].P;

    public void AddAdapter(string adapter, VeraProjections projections, VeraConfig c, bool trainable)
    {
        if (projections.A.shape[1] < InFeatures || projections.B.shape[0] < OutFeatures || projections.A.shape[0] != c.R)
            throw new PeftConfigException($"VeRA: the shared projections [{string.Join(", ", projections.A.shape)}]/[{string.Join(", ", projections.B.shape)}] do not cover a layer of {OutFeatures}x{InFeatures} at r={c.R}");
        var device = BaseWeight.device;
        using (no_grad())
        {
            var b = c.InitWeights ? zeros(OutFeatures, device: device) : ones(OutFeatures, device: device);
            var d = c.InitWeights ? full(c.R, c.DInitial, device: device) : randn(c.R, device: device);
            vera_lambda_b.Add(adapter, new Parameter(b));
            vera_lambda_d.Add(adapter, new Parameter(d));
        }
        _settings[adapter] = (projections, c.R, c.VeraDropout);
        Register(adapter, trainable);
    }

    protected override IEnumerable<Parameter> TrainableTensors(string adapter)
    {
        yield return vera_lambda_b[adapter];
        yield return vera_lambda_d[adapter];
    }

    protected override void RemoveTensors(string adapter)
    {
        vera_lambda_b.Remove(adapter);
        vera_lambda_d.Remove(adapter);
        _settings.Remove(adapter);
    }

    (Tensor A, Tensor B) Sliced(string adapter, Device device)
    {
        var p = _settings[adapter].P;
        p.EnsureOn(device);
        return (p.A.narrow(1, 0, InFeatures), p.B.narrow(0, 0, OutFeatures));
    }

    protected override Tensor AdapterOutput(string adapter, Tensor x)
    {
        var lb = vera_lambda_b[adapter];
        var ld = vera_lambda_d[adapter];
        var (a, b) = Sliced(adapter, x.device);
        var xx = Dropout(x.to(ld.dtype), _settings[adapter].Dropout);
        return lb * nn.functional.linear(ld * nn.functional.linear(xx, a.to(ld.dtype)), b.to(ld.dtype));
    }

    protected override Tensor DeltaOI(string adapter, ScalarType dtype)
    {
        var (a, b) = Sliced(adapter, BaseWeight.device);
        var lb = vera_lambda_b[adapter].to(dtype).unsqueeze(-1);
        var ld = vera_lambda_d[adapter].to(dtype).unsqueeze(-1);
        return (lb * b.to(dtype)).matmul(ld * a.to(dtype));
    }

    public override (Tensor Left, Tensor Right)? DeltaFactors(string adapter)
    {
        var (a, b) = Sliced(adapter, BaseWeight.device);
        return (vera_lambda_b[adapter].unsqueeze(-1) * b, vera_lambda_d[adapter].unsqueeze(-1) * a);
    }

    public override IEnumerable<(string Key, Tensor Value)> AdapterState(string adapter)
    {
        if (!Has(adapter)) yield break;
        yield return ("vera_lambda_b", vera_lambda_b[adapter]);
        yield return ("vera_lambda_d", vera_lambda_d[adapter]);
    }

    public override bool LoadAdapterState(string adapter, string key, Tensor value)
    {
        if (!Has(adapter)) return false;
        return key switch
        {
            "vera_lambda_b" => CopyChecked(vera_lambda_b[adapter], value, key),
            "vera_lambda_d" => CopyChecked(vera_lambda_d[adapter], value, key),
            _ => false,
        };
    }
}
