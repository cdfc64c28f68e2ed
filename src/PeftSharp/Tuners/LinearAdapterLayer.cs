using PeftSharp.Models;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;
using static TorchSharp.torch.nn;

namespace PeftSharp.Tuners;

/// <summary>
/// A wrapper whose merge changes one weight matrix by ΔW (LoRA variants other than LoRA itself): what
/// <see cref="ParameterAccounting"/> needs to report changed elements and the rank of ΔW.
/// </summary>
public interface IDeltaWeightLayer
{
    Parameter BaseWeight { get; }
    /// <summary>ΔW of one adapter in the base weight's layout, detached, in <paramref name="dtype"/> (default float32).</summary>
    Tensor DeltaWeight(string adapter, ScalarType? dtype = null);
    /// <summary>Short name of the method for reports ("vera", "adalora", ...).</summary>
    string Kind { get; }
    /// <summary>The adapter's configured rank (the projection rank for VeRA).</summary>
    int RankOf(string adapter);
    /// <summary>ΔW up to layout and scaling as Left·Right ([rows, r]·[r, cols]) where the method's ΔW is such a product, else null.</summary>
    (Tensor Left, Tensor Right)? DeltaFactors(string adapter) => null;
}

/// <summary>
/// The LoRA-variant wrappers of a <c>Linear</c> or GPT-2 <c>Conv1D</c> (VeRA, AdaLoRA, Delta-LoRA) on the shared
/// <see cref="AdapterLayer"/> bookkeeping: merge adds ΔW and unmerge subtracts it, a mixed batch adds each row group's
/// adapter output. Subclasses give the adapter's output and ΔW.
/// </summary>
public abstract class LinearAdapterLayer : AdapterLayer, IDeltaWeightLayer
{
    public bool FanInFanOut { get; }
    public long InFeatures { get; }
    public long OutFeatures { get; }

    protected LinearAdapterLayer(string name, Module<Tensor, Tensor> baseLayer) : base(name, baseLayer)
    {
        switch (baseLayer)
        {
            case Linear l: InFeatures = l.in_features; OutFeatures = l.out_features; break;
            case Conv1D c: InFeatures = c.InFeatures; OutFeatures = c.OutFeatures; FanInFanOut = true; break;
            default: throw new PeftSharpException($"{name} can wrap a Linear or Conv1D only; got {baseLayer.GetType().Name}");
        }
    }

    public static bool IsLinear(nn.Module m) => m is TorchSharp.Modules.Linear or Conv1D;

    public abstract string Kind { get; }
    public abstract int RankOf(string adapter);
    public virtual (Tensor Left, Tensor Right)? DeltaFactors(string adapter) => null;

    public Parameter BaseWeight => base_layer switch
    {
        Linear l => l.weight!,
        Conv1D c => c.weight,
        _ => throw new InvalidOperationException(),
    };

    /// <summary>The base weight as [out, in] (a view for Conv1D).</summary>
    protected Tensor WeightOI => FanInFanOut ? BaseWeight.t() : BaseWeight;

    /// <summary>The adapter's addition to the base output for input <paramref name="x"/> (any leading dims).</summary>
    protected abstract Tensor AdapterOutput(string adapter, Tensor x);

    /// <summary>ΔW as [out, in] in <paramref name="dtype"/>.</summary>
    protected abstract Tensor DeltaOI(string adapter, ScalarType dtype);

    /// <summary>What merging adds to the base weight as it is now ([out, in]); ΔW itself unless the method already changed the base weight.</summary>
    protected virtual Tensor MergeDeltaOI(string adapter, ScalarType dtype) => DeltaOI(adapter, dtype);

    Tensor MergeDelta(string adapter, ScalarType dtype)
    {
        var d = MergeDeltaOI(adapter, dtype);
        return FanInFanOut ? d.t().contiguous() : d;
    }

    /// <summary>ΔW = merged weight − original base weight, in the base weight's layout.</summary>
    public Tensor DeltaWeight(string adapter, ScalarType? dtype = null)
    {
        using var _ = no_grad();
        var d = DeltaOI(adapter, dtype ?? ScalarType.Float32);
        return FanInFanOut ? d.t().contiguous() : d;
    }

    protected override void MergeOne(string adapter)
    {
        using var scope = NewDisposeScope();
        var w = BaseWeight;
        w.add_(MergeDelta(adapter, w.dtype == ScalarType.Float64 ? ScalarType.Float64 : ScalarType.Float32).to(w.dtype));
    }

    protected override void UnmergeOne(string adapter)
    {
        using var scope = NewDisposeScope();
        var w = BaseWeight;
        w.sub_(MergeDelta(adapter, w.dtype == ScalarType.Float64 ? ScalarType.Float64 : ScalarType.Float32).to(w.dtype));
    }

    public override Tensor forward(Tensor x)
    {
        if (UseBaseOnly) return base_layer.call(x);
        using var scope = NewDisposeScope();
        var result = base_layer.call(x);
        var resultType = result.dtype;
        if (RowAdapters is { } rows)
        {
            CheckMixedBatch();
            foreach (var name in rows.Distinct.Where(Has))
            {
                var idx = rows.Rows(name);
                result = result.index_add(0, idx, AdapterOutput(name, x.index_select(0, idx)).to(resultType), 1);
            }
            return result.MoveToOuterDisposeScope();
        }
        foreach (var name in ActiveAdapters) result = result + AdapterOutput(name, x);
        return result.to(resultType).MoveToOuterDisposeScope();
    }

    protected Tensor Dropout(Tensor x, double p) => p > 0 && training ? nn.functional.dropout(x, p, true) : x;
}

/// <summary>
/// A method whose adapter has tensors outside any wrapped module (VeRA's shared projections, saved as
/// <c>base_model.vera_A</c>): PeftModel saves and loads them through this.
/// </summary>
public interface IModelLevelState
{
    /// <summary>Full checkpoint key → tensor (e.g. "base_model.vera_A").</summary>
    IEnumerable<(string Key, Tensor Value)> ModelState(PeftModel peft, string adapter);
    /// <summary>Copies a checkpoint tensor in; false if the key is not one of this method's model-level keys.</summary>
    bool LoadModelState(PeftModel peft, string adapter, string key, Tensor value);
}

/// <summary>Config preparation shared by the LoRA-variant methods (the same rules as LoRA's).</summary>
internal static class VariantPreparation
{
    /// <summary>The model type's default targets when none are given, and "all-linear" expanded.</summary>
    public static StringOrList ResolveTargets(PreTrainedModel model, StringOrList? targets, string? taskType, string method)
    {
        if (targets is null)
        {
            if (!TargetMatcher.DefaultTargets.TryGetValue(model.Config.ModelType, out var defaults))
                throw new PeftConfigException($"{method}: target_modules is not set and there is no default for model_type '{model.Config.ModelType}'; give target_modules");
            return StringOrList.Of(defaults);
        }
        if (targets is { IsString: true } t && string.Equals(t.Pattern, TargetMatcher.AllLinear, StringComparison.OrdinalIgnoreCase))
            return StringOrList.Of(TargetMatcher.ExpandAllLinear(model, taskType));
        return targets;
    }

    /// <summary>peft forces fan_in_fan_out to true for Conv1D targets and to false for Linear ones (with a warning).</summary>
    public static bool FanInFanOut(PreTrainedModel model, TargetSpec spec, Func<nn.Module, bool> supported, string method, bool configured)
    {
        var targets = TargetMatcher.Resolve(model, spec, supported, method).Select(n => ModuleSurgery.Get(model, n));
        bool conv1D = targets.Any(m => m is Conv1D || m is LinearAdapterLayer { FanInFanOut: true });
        if (conv1D != configured)
            PeftMethods.Warn($"fan_in_fan_out is set to {configured.ToString().ToLowerInvariant()} but the targets are {(conv1D ? "Conv1D" : "Linear")}; setting it to {conv1D.ToString().ToLowerInvariant()}");
        return conv1D;
    }
}
