using PeftSharp.Models;
using PeftSharp.Quantization;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;
using static TorchSharp.torch.nn;

namespace PeftSharp.Tuners.Lora;

/// <summary>
/// peft's lora.Linear, for a <c>Linear</c> or GPT-2 <c>Conv1D</c> base (the latter stores its weight [in,out]:
/// fan_in_fan_out). y = base(x) + Σ scaling·B(A(dropout(x))) for plain adapters; an adapter's variant (DoRA) computes
/// its own term from this layer's primitives. Merge/unmerge edit the base weight in place.
/// A bitsandbytes <see cref="Linear4bit"/> base (QLoRA, peft's lora.bnb.Linear4bit) dequantizes per call and LoRA adds on
/// top; DoRA norms use the dequantized weight. Merging replaces such a base by its dequantized float Linear first
/// (W' = dequant(W) + ΔW is kept in float, never re-quantized; see docs/qlora.md).
/// </summary>
public sealed class LoraLinear : LoraLayer, ILowRankLayer
{
    readonly AdapterModules<Linear> lora_A = new();
    readonly AdapterModules<Linear> lora_B = new();

    public bool FanInFanOut { get; }
    public long InFeatures { get; }
    public long OutFeatures { get; }

    public LoraLinear(Module<Tensor, Tensor> baseLayer) : base(nameof(LoraLinear), baseLayer)
    {
        switch (baseLayer)
        {
            case Linear l: InFeatures = l.in_features; OutFeatures = l.out_features; break;
            case Conv1D c: InFeatures = c.InFeatures; OutFeatures = c.OutFeatures; FanInFanOut = true; break;
            case Linear4bit q: InFeatures = q.InFeatures; OutFeatures = q.OutFeatures; break;
            default: throw new PeftSharpException($"LoRA Linear cannot wrap a {baseLayer.GetType().Name}");
        }
        register_module("lora_A", lora_A);
        register_module("lora_B", lora_B);
        register_module("lora_magnitude_vector", lora_magnitude_vector);
        RegisterComponents();
    }

    /// <summary>The stored weight; for a 4-bit base a fresh dequantized copy in its original dtype (peft's dequantize_module_weight).</summary>
    public override Tensor BaseWeight => base_layer switch
    {
        Linear l => l.weight!,
        Conv1D c => c.weight,
        Linear4bit q => q.Dequantize(q.OriginalDType),
        _ => throw new InvalidOperationException(),
    };

    Tensor? BaseBias => base_layer switch { Linear l => l.bias, Conv1D c => c.bias, Linear4bit q => q.Bias, _ => null };

    /// <summary>True while the base is a 4-bit layer (until a merge dequantizes it).</summary>
    public bool IsQuantizedBase => base_layer is Linear4bit;

    /// <summary>The base weight as [out, in] (a view for Conv1D).</summary>
    public override Tensor WeightOI => FanInFanOut ? BaseWeight.t() : BaseWeight;

    public override Tensor ToBaseLayout(Tensor weightOI) => FanInFanOut ? weightOI.t() : weightOI;

    public Tensor A(string adapter) => lora_A[adapter].weight!;

    // B·A is the update in [out, in] layout whether the base is a Linear or a Conv1D (whose weight is its transpose).
    public (Tensor Down, Tensor Up, double Scale)? LowRankFactors(string adapter) =>
        SettingsOf(adapter) is { Variant.IsLowRank: true } s ? (A(adapter), B(adapter), s.Scaling) : null;
    public Tensor B(string adapter) => lora_B[adapter].weight!;
    public Tensor? Magnitude(string adapter) => MagnitudeOf(adapter);

    protected override void CreateTensors(string adapter, LoraAdapterSettings s)
    {
        var device = base_layer is Linear4bit q ? q.PackedWeight.device : BaseWeight.device;
        var a = nn.Linear(InFeatures, s.R, hasBias: false, device: device, dtype: ScalarType.Float32);
        var b = nn.Linear(s.R, OutFeatures, hasBias: false, device: device, dtype: ScalarType.Float32);
        switch (s.Init)
        {
            case "true":
                nn.init.kaiming_uniform_(a.weight!, Math.Sqrt(5));
                b.weight!.zero_();
                break;
            case "gaussian":
                a.weight!.normal_(0, 1.0 / s.R);
                b.weight!.zero_();
                break;
            case "false":
                // nn.Linear's own init for both (the adapter is not a no-op; peft's debugging option).
                nn.init.kaiming_uniform_(a.weight!, Math.Sqrt(5));
                nn.init.kaiming_uniform_(b.weight!, Math.Sqrt(5));
                break;
            default:
                throw new PeftConfigException($"init_lora_weights '{s.Init}' is not supported (supported: true, false, gaussian)");
        }
        // peft moves adapters to the base dtype only when it is a float type: a 4-bit base keeps them float32.
        if (!IsQuantizedBase)
        {
            RoundThroughBaseDType(a.weight!);
            RoundThroughBaseDType(b.weight!);
        }
        lora_A.Add(adapter, a);
        lora_B.Add(adapter, b);
    }

    protected override void RemoveTensors(string adapter)
    {
        lora_A.Remove(adapter);
        lora_B.Remove(adapter);
    }

    protected override (Parameter A, Parameter B)? Factors(string adapter) =>
        lora_A.Contains(adapter) ? (lora_A[adapter].weight!, lora_B[adapter].weight!) : null;

    public override Tensor forward(Tensor x)
    {
        if (UseBaseOnly) return base_layer.call(x);
        using var scope = NewDisposeScope();
        if (RowAdapters is { } rows) return MixedForward(x, rows).MoveToOuterDisposeScope();
        // Under autocast the base layer gets the cast input when it computes in that dtype.
        var result = base_layer.call(AutocastDtype is { } bt && base_layer is Linear { weight: { } w } && w.dtype == bt ? x.to(bt) : x);
        var resultType = result.dtype;
        foreach (var name in ActiveAdapters) result = result + Settings[name].Variant.Delta(this, name, x, result);
        return result.to(resultType).MoveToOuterDisposeScope();
    }

    Tensor Dropout(Tensor x, double p) => p > 0 && training ? nn.functional.dropout(x, p, true) : x;

    public override Tensor LowRankDelta(string adapter, Tensor x)
    {
        var s = Settings[adapter];
        if (AutocastDtype is not { } dt) return LowRankOutput(adapter, Dropout(x.to(A(adapter).dtype), s.Dropout)) * s.Scaling;
        // The scaling folded into the small B rather than applied to the [tokens, out] product.
        return nn.functional.linear(nn.functional.linear(Dropout(x.to(dt), s.Dropout), A(adapter).to(dt)), (B(adapter) * s.Scaling).to(dt));
    }

    public override Tensor LowRankOutput(string adapter, Tensor input) => lora_B[adapter].call(lora_A[adapter].call(input));

    /// <summary>With dropout in training, W·dropout(x) is recomputed instead of reusing the base output (peft's DoRA).</summary>
    public override (Tensor Input, Tensor BaseResult) DoraInputs(string adapter, Tensor x, Tensor result, Tensor weightOI)
    {
        var s = Settings[adapter];
        x = x.to(A(adapter).dtype);
        if (s.Dropout > 0 && training)
        {
            x = Dropout(x, s.Dropout);
            return (x, nn.functional.linear(x, weightOI));
        }
        return (x, BaseBias is { } bias ? result - bias : result);
    }

    /// <summary>
    /// One pass for a batch whose rows use different adapters: each row's A and B (zero-padded to the largest rank,
    /// zeros for __base__ and for adapters this layer lacks) are gathered once per row set into [rows, in, r] and
    /// [rows, r, out] (kept in <paramref name="rows"/>, so a decode loop reuses them every step) and applied with two
    /// batched matmuls. Re-stacking and re-gathering them every forward cost several times the matmuls themselves.
    /// Adapters of other variants (DoRA) are applied per row group.
    /// </summary>
    Tensor MixedForward(Tensor x, RowAdapters rows)
    {
        CheckMixedBatch();
        var result = base_layer.call(x);
        var resultType = result.dtype;
        var present = rows.Distinct.Where(Settings.ContainsKey).ToList();
        if (present.Any(n => Settings[n].Variant.IsLowRank))
        {
            var perRow = rows.Cached(this, () => PerRowWeights(rows, present.Where(n => Settings[n].Variant.IsLowRank).ToList()));
            var (aRows, bRows) = (perRow[0], perRow[1]);
            var x3 = x.to(aRows.dtype).reshape(x.shape[0], -1, InFeatures);
            var y = bmm(bmm(x3, aRows), bRows);
            result = result + y.reshape(result.shape).to(resultType);
        }
        foreach (var name in present.Where(n => !Settings[n].Variant.IsLowRank))
        {
            var idx = rows.Rows(name);
            var sub = result.index_select(0, idx);
            var term = Settings[name].Variant.Delta(this, name, x.index_select(0, idx), sub);
            result = result.index_add(0, idx, term.to(resultType), 1);
        }
        return result;
    }

    /// <summary>Each row's Aᵀ [rows, in, r] and (s·B)ᵀ [rows, r, out], contiguous for bmm.</summary>
    Tensor[] PerRowWeights(RowAdapters rows, List<string> plain)
    {
        int rmax = plain.Max(n => Settings[n].R);
        var dtype = A(plain[0]).dtype;
        var device = A(plain[0]).device;
        var aStack = stack(plain.Select(n => nn.functional.pad(A(n), new long[] { 0, 0, 0, rmax - Settings[n].R }))
            .Append(zeros(rmax, InFeatures, dtype: dtype, device: device)).ToArray());
        var bStack = stack(plain.Select(n => nn.functional.pad(B(n) * Settings[n].Scaling, new long[] { 0, rmax - Settings[n].R }))
            .Append(zeros(OutFeatures, rmax, dtype: dtype, device: device)).ToArray());
        var slot = rows.SlotPerRow(plain);
        return new[] { aStack.index_select(0, slot).transpose(1, 2).contiguous(), bStack.index_select(0, slot).transpose(1, 2).contiguous() };
    }

    protected override void PrepareBaseForMerge()
    {
        if (base_layer is not Linear4bit q) return;
        ModuleSurgery.Replace(this, "base_layer", q.ToLinear());
        q.Dispose();
    }

    protected override (string A, string B) StateKeys => ("lora_A.weight", "lora_B.weight");
    public override Tensor AOf(string adapter) => A(adapter);
    public override Tensor BOf(string adapter) => B(adapter);
}
