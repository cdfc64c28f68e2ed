using PeftSharp.Models;
using PeftSharp.Quantization;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;
using static TorchSharp.torch.nn;

namespace PeftSharp.Tuners.Lora;

/// <summary>
/// peft's lora.Linear, for a <c>Linear</c> or GPT-2 <c>Conv1D</c> base (the latter stores its weight [in,out]:
/// fan_in_fan_out). y = base(x) + Σ scaling·B(A(dropout(x))); with DoRA the magnitude vector rescales each output row
/// by m/‖W + s·BA‖ (norm detached, peft-spec §4). Merge/unmerge edit the base weight in place.
/// A bitsandbytes <see cref="Linear4bit"/> base (QLoRA, peft's lora.bnb.Linear4bit) dequantizes per call and LoRA adds on
/// top; DoRA norms use the dequantized weight. Merging replaces such a base by its dequantized float Linear first
/// (W' = dequant(W) + ΔW is kept in float, never re-quantized; see docs/qlora.md).
/// </summary>
public sealed class LoraLinear : LoraLayer, ILowRankLayer
{
    readonly AdapterModules<Linear> lora_A = new();
    readonly AdapterModules<Linear> lora_B = new();
    readonly AdapterModules<WeightHolder> lora_magnitude_vector = new();
    // DoRA: the row norms used at merge time, needed to unmerge exactly (peft caches them too; never saved).

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
    Tensor WeightOI => FanInFanOut ? BaseWeight.t() : BaseWeight;

    public Tensor A(string adapter) => lora_A[adapter].weight!;

    // B·A is the update in [out, in] layout whether the base is a Linear or a Conv1D (whose weight is its transpose).
    public (Tensor Down, Tensor Up, double Scale)? LowRankFactors(string adapter) =>
        SettingsOf(adapter) is { UseDora: false } s ? (A(adapter), B(adapter), s.Scaling) : null;
    public Tensor B(string adapter) => lora_B[adapter].weight!;
    public Tensor? Magnitude(string adapter) => lora_magnitude_vector.Contains(adapter) ? lora_magnitude_vector[adapter].weight : null;

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
        if (s.UseDora)
        {
            using var scope = NewDisposeScope();
            var w = WeightOI.to(ScalarType.Float32) + s.Scaling * b.weight!.matmul(a.weight!);
            lora_magnitude_vector.Add(adapter, new WeightHolder(linalg.norm(w, dims: new long[] { 1 }).MoveToOuterDisposeScope()));
        }
    }

    protected override void RemoveTensors(string adapter)
    {
        lora_A.Remove(adapter);
        lora_B.Remove(adapter);
        lora_magnitude_vector.Remove(adapter);
        if (MergeNorms.Remove(adapter, out var n)) n.Dispose();
    }

    protected override IEnumerable<Parameter> TrainableTensors(string adapter)
    {
        if (lora_A.Contains(adapter)) yield return lora_A[adapter].weight!;
        if (lora_B.Contains(adapter)) yield return lora_B[adapter].weight!;
        if (lora_magnitude_vector.Contains(adapter)) yield return lora_magnitude_vector[adapter].weight;
    }

    public override Tensor forward(Tensor x)
    {
        if (UseBaseOnly) return base_layer.call(x);
        using var scope = NewDisposeScope();
        if (RowAdapters is { } rows) return MixedForward(x, rows).MoveToOuterDisposeScope();
        // Under autocast the input is cast once, for the base layer (when it computes in that dtype) and for A.
        var xc = AutocastDtype is { } ct ? x.to(ct) : x;
        var result = base_layer.call(AutocastDtype is { } bt && base_layer is Linear { weight: { } w } && w.dtype == bt ? xc : x);
        var resultType = result.dtype;
        foreach (var name in ActiveAdapters)
        {
            var s = Settings[name];
            if (s.UseDora) result = result + DoraTerm(name, x.to(A(name).dtype), result);
            else if (AutocastDtype is { } dt)
            {
                var xd = Dropout(xc, s.Dropout);
                // The scaling folded into the small B rather than applied to the [tokens, out] product.
                result = result + nn.functional.linear(nn.functional.linear(xd, A(name).to(dt)), (B(name) * s.Scaling).to(dt));
            }
            else result = result + lora_B[name].call(lora_A[name].call(Dropout(x.to(A(name).dtype), s.Dropout))) * s.Scaling;
        }
        return result.to(resultType).MoveToOuterDisposeScope();
    }

    Tensor Dropout(Tensor x, double p) => p > 0 && training ? nn.functional.dropout(x, p, true) : x;

    /// <summary>
    /// DoRA's addition to <paramref name="result"/> (the running output, peft's base_result):
    /// (m/n − 1)·(result − b) + (m/n)·s·B(A(x)), with n = ‖W + s·BA‖ per output row, detached.
    /// With dropout in training, W·dropout(x) is recomputed instead of reusing the base output.
    /// </summary>
    Tensor DoraTerm(string name, Tensor x, Tensor result)
    {
        var s = Settings[name];
        var ba = B(name).matmul(A(name)).detach();
        var w = WeightOI.to(x.dtype);
        var norm = linalg.norm(w + s.Scaling * ba, dims: new long[] { 1 }).detach();
        var scale = (Magnitude(name)! / norm).view(1, -1);
        Tensor baseResult;
        if (s.Dropout > 0 && training)
        {
            x = Dropout(x, s.Dropout);
            baseResult = nn.functional.linear(x, w);
        }
        else
        {
            var bias = BaseBias;
            baseResult = bias is null ? result : result - bias;
        }
        var lora = lora_B[name].call(lora_A[name].call(x));
        return (scale - 1) * baseResult + scale * lora * s.Scaling;
    }

    /// <summary>
    /// One pass for a batch whose rows use different adapters: each row's A and B (zero-padded to the largest rank,
    /// zeros for __base__ and for adapters this layer lacks) are gathered once per row set into [rows, in, r] and
    /// [rows, r, out] (kept in <paramref name="rows"/>, so a decode loop reuses them every step) and applied with two
    /// batched matmuls. Re-stacking and re-gathering them every forward cost several times the matmuls themselves.
    /// DoRA adapters are applied per row group.
    /// </summary>
    Tensor MixedForward(Tensor x, RowAdapters rows)
    {
        CheckMixedBatch();
        var result = base_layer.call(x);
        var resultType = result.dtype;
        var present = rows.Distinct.Where(Settings.ContainsKey).ToList();
        if (present.Any(n => !Settings[n].UseDora))
        {
            var perRow = rows.Cached(this, () => PerRowWeights(rows, present.Where(n => !Settings[n].UseDora).ToList()));
            var (aRows, bRows) = (perRow[0], perRow[1]);
            var x3 = x.to(aRows.dtype).reshape(x.shape[0], -1, InFeatures);
            var y = bmm(bmm(x3, aRows), bRows);
            result = result + y.reshape(result.shape).to(resultType);
        }
        foreach (var name in present.Where(n => Settings[n].UseDora))
        {
            var idx = rows.Rows(name);
            var sub = result.index_select(0, idx);
            var term = DoraTerm(name, x.index_select(0, idx).to(A(name).dtype), sub);
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

    public override Tensor DeltaWeight(string adapter)
    {
        using var _ = no_grad();
        var d = B(adapter).matmul(A(adapter)) * ScalingOf(adapter);
        return FanInFanOut ? d.t().contiguous() : d;
    }

    protected override Tensor ComputeMerged(string adapter, out Tensor? doraNorm, ScalarType? dtype = null)
    {
        doraNorm = null;
        var dt = dtype ?? A(adapter).dtype;
        var delta = B(adapter).to(dt).matmul(A(adapter).to(dt)) * ScalingOf(adapter);
        var combined = WeightOI.to(dt) + delta;
        if (Settings[adapter].UseDora)
        {
            doraNorm = linalg.norm(combined, dims: new long[] { 1 });
            combined = (Magnitude(adapter)!.to(dt) / doraNorm).unsqueeze(1) * combined;
        }
        return FanInFanOut ? combined.t() : combined;
    }

    protected override void PrepareBaseForMerge()
    {
        if (base_layer is not Linear4bit q) return;
        ModuleSurgery.Replace(this, "base_layer", q.ToLinear());
        q.Dispose();
    }

    protected override void UnmergeOne(string adapter)
    {
        using var scope = NewDisposeScope();
        var w = BaseWeight;
        if (!Settings[adapter].UseDora)
        {
            w.sub_(DeltaWeight(adapter).to(w.dtype));
            return;
        }
        if (!MergeNorms.Remove(adapter, out var norm))
            throw new PeftSharpException($"DoRA adapter '{adapter}' cannot be unmerged: its merge-time weight norm is unknown");
        var delta = B(adapter).matmul(A(adapter)) * ScalingOf(adapter);
        var factor = (Magnitude(adapter)! / norm).unsqueeze(1);
        var restored = WeightOI.to(delta.dtype) / factor - delta;
        w.copy_((FanInFanOut ? restored.t() : restored).to(w.dtype));
        norm.Dispose();
    }

    protected override (string A, string B) StateKeys => ("lora_A.weight", "lora_B.weight");
    protected override Tensor AOf(string adapter) => A(adapter);
    protected override Tensor BOf(string adapter) => B(adapter);
    protected override Tensor? MagnitudeOf(string adapter) => Magnitude(adapter);
}
