using PeftSharp.Models;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;
using static TorchSharp.torch.nn;

namespace PeftSharp.Tuners.IA3;

/// <summary>
/// (IA)³ on a <c>Linear</c> or GPT-2 <c>Conv1D</c> (peft's ia3 Linear): each adapter is one learned vector
/// <c>ia3_l</c>. A feed-forward layer scales its input (<c>[1, in]</c>: y = base(x ⊙ l)); any other scales its output,
/// bias included (<c>[out, 1]</c>: y = base(x) ⊙ l). Active adapters multiply; in a mixed batch each row gets its own
/// adapter's vector (ones for the base). Merge multiplies the weight along that axis (and the bias of an output-scaling
/// layer); unmerge divides by l + 1e-8, as peft does (inexact for l near 0).
/// </summary>
public sealed class IA3Linear : AdapterLayer, IDeltaWeightLayer
{
    readonly AdapterParameters ia3_l = new();

    public bool IsFeedforward { get; }
    /// <summary>True over a Conv1D, whose weight is [in, out].</summary>
    public bool FanInFanOut { get; }
    public long InFeatures { get; }
    public long OutFeatures { get; }

    public IA3Linear(Module<Tensor, Tensor> baseLayer, bool isFeedforward) : base(nameof(IA3Linear), baseLayer)
    {
        switch (baseLayer)
        {
            case Linear l: InFeatures = l.in_features; OutFeatures = l.out_features; break;
            case Conv1D c: InFeatures = c.InFeatures; OutFeatures = c.OutFeatures; FanInFanOut = true; break;
            default: throw new PeftSharpException($"IA3 can wrap a Linear or Conv1D only; got {baseLayer.GetType().Name}");
        }
        IsFeedforward = isFeedforward;
        RegisterComponents();
    }

    public static bool CanWrap(nn.Module m) => m is TorchSharp.Modules.Linear or Conv1D;

    public Parameter BaseWeight => base_layer switch
    {
        Linear l => l.weight!,
        Conv1D c => c.weight,
        _ => throw new InvalidOperationException(),
    };

    Parameter? BaseBias => base_layer.named_parameters(false).FirstOrDefault(p => p.name == "bias").parameter;

    public Parameter Vector(string adapter) => ia3_l[adapter];

    /// <summary>Adds a vector of ones (or N(0, 1) without <paramref name="init"/>) in the base weight's float type and device.</summary>
    public void AddAdapter(string adapter, bool init, bool trainable)
    {
        CheckNew(adapter);
        var w = BaseWeight;
        var dtype = is_floating_point(w) ? w.dtype : ScalarType.Float32;
        long[] shape = IsFeedforward ? new[] { 1L, InFeatures } : new[] { OutFeatures, 1L };
        using (no_grad()) ia3_l.Add(adapter, new Parameter(init ? ones(shape, dtype, w.device) : randn(shape, dtype, w.device)));
        Register(adapter, trainable);
    }

    public string Kind => "ia3";
    public int RankOf(string adapter) => 0;

    protected override IEnumerable<Parameter> TrainableTensors(string adapter) => new[] { ia3_l[adapter] };
    protected override void RemoveTensors(string adapter) => ia3_l.Remove(adapter);

    /// <summary>The adapter's vector laid out like the base weight ([out, in] for Linear, [in, out] for Conv1D).</summary>
    Tensor WeightLayout(string adapter) => FanInFanOut ? ia3_l[adapter].t() : ia3_l[adapter];

    protected override void MergeOne(string adapter)
    {
        using var scope = NewDisposeScope();
        var w = BaseWeight;
        w.copy_(w * WeightLayout(adapter));
        if (!IsFeedforward && BaseBias is { } b) b.copy_(b * ia3_l[adapter].reshape(b.shape));
    }

    protected override void UnmergeOne(string adapter)
    {
        using var scope = NewDisposeScope();
        var w = BaseWeight;
        w.copy_(w / (WeightLayout(adapter) + 1e-8));
        if (!IsFeedforward && BaseBias is { } b) b.copy_(b / (ia3_l[adapter].reshape(b.shape) + 1e-8));
    }

    /// <summary>ΔW = W ⊙ l − W in the base weight's layout (the bias change of an output-scaling layer is not part of it).</summary>
    public Tensor DeltaWeight(string adapter, ScalarType? dtype = null)
    {
        using var _ = no_grad();
        var dt = dtype ?? ScalarType.Float32;
        return BaseWeight.to(dt) * (WeightLayout(adapter).to(dt) - 1);
    }

    public override IEnumerable<(string Key, Tensor Value)> AdapterState(string adapter)
    {
        if (ia3_l.Contains(adapter)) yield return ("ia3_l", ia3_l[adapter]);
    }

    public override bool LoadAdapterState(string adapter, string key, Tensor value)
    {
        if (key != "ia3_l" || !ia3_l.Contains(adapter)) return false;
        var l = ia3_l[adapter];
        if (!l.shape.SequenceEqual(value.shape))
            throw new PeftFormatException(null, $"adapter tensor 'ia3_l' has shape [{string.Join(", ", value.shape)}], the layer expects [{string.Join(", ", l.shape)}] (feedforward_modules or target module mismatch)");
        using (no_grad()) l.copy_(value);
        return true;
    }

    public override Tensor forward(Tensor x)
    {
        if (UseBaseOnly) return base_layer.call(x);
        using var scope = NewDisposeScope();
        Tensor? scale;
        if (RowAdapters is { } rows)
        {
            CheckMixedBatch();
            scale = RowScale(rows, x.dim());
        }
        else
        {
            scale = null;
            foreach (var a in ActiveAdapters) scale = scale is null ? ia3_l[a].flatten() : scale * ia3_l[a].flatten();
        }
        if (scale is null) return base_layer.call(x).MoveToOuterDisposeScope();
        if (IsFeedforward) return base_layer.call((x.to(scale.dtype) * scale).to(x.dtype)).MoveToOuterDisposeScope();
        var y = base_layer.call(x);
        return (y * scale).to(y.dtype).MoveToOuterDisposeScope();
    }

    // Each row's vector ([rows, 1.., features], ones for rows without one of this layer's adapters), kept by the
    // RowAdapters instance across the forwards of a decode loop.
    Tensor? RowScale(RowAdapters rows, long dims)
    {
        var mine = rows.Distinct.Where(Has).ToList();
        if (mine.Count == 0) return null;
        var perRow = rows.Cached(this, () =>
        {
            var table = cat(mine.Select(a => ia3_l[a].detach().flatten().unsqueeze(0)).Append(ones_like(ia3_l[mine[0]]).flatten().unsqueeze(0)).ToArray(), 0);
            return new[] { table.index_select(0, rows.SlotPerRow(mine)) };
        })[0];
        var shape = new long[dims];
        Array.Fill(shape, 1L);
        shape[0] = perRow.shape[0];
        shape[^1] = perRow.shape[1];
        return perRow.view(shape);
    }
}
