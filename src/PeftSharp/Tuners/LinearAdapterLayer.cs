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
/// Bookkeeping shared by the LoRA-variant wrappers of a <c>Linear</c> or GPT-2 <c>Conv1D</c>: the base layer, named
/// adapters, active set, disable switch, merge stack (merge adds ΔW, unmerge subtracts it) and mixed-adapter batches
/// (each row group gets its adapter's output added). Subclasses give the adapter's output and ΔW.
/// </summary>
public abstract class LinearAdapterLayer : nn.Module<Tensor, Tensor>, IAdapterLayer, IDeltaWeightLayer
{
    protected readonly Module<Tensor, Tensor> base_layer;
    readonly List<string> _order = new();
    readonly List<string> _active = new();
    readonly List<string> _merged = new();

    public bool FanInFanOut { get; }
    public long InFeatures { get; }
    public long OutFeatures { get; }

    protected LinearAdapterLayer(string name, Module<Tensor, Tensor> baseLayer) : base(name)
    {
        base_layer = baseLayer;
        switch (baseLayer)
        {
            case Linear l: InFeatures = l.in_features; OutFeatures = l.out_features; break;
            case Conv1D c: InFeatures = c.InFeatures; OutFeatures = c.OutFeatures; FanInFanOut = true; break;
            default: throw new PeftSharpException($"{name} can wrap a Linear or Conv1D only; got {baseLayer.GetType().Name}");
        }
        register_module("base_layer", baseLayer);
    }

    public static bool IsLinear(nn.Module m) => m is TorchSharp.Modules.Linear or Conv1D;

    public nn.Module BaseLayer => base_layer;
    public IReadOnlyList<string> Adapters => _order;
    public IReadOnlyList<string> ActiveAdapters => _active;
    public bool AdaptersDisabled { get; set; }
    public RowAdapters? RowAdapters { get; set; }
    public IReadOnlyList<string> MergedAdapters => _merged;
    public nn.Module Unwrapped => base_layer;
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

    /// <summary>Records a new adapter whose tensors the subclass has created.</summary>
    protected void Register(string adapter, bool trainable)
    {
        if (_order.Contains(adapter)) throw new PeftSharpException($"adapter '{adapter}' already exists in this layer");
        _order.Add(adapter);
        SetTrainable(adapter, trainable);
    }

    public bool Has(string adapter) => _order.Contains(adapter);

    /// <summary>The adapter's trainable tensors (what SetTrainable switches).</summary>
    protected abstract IEnumerable<Parameter> TrainableTensors(string adapter);
    protected abstract void RemoveTensors(string adapter);

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

    public void SetActiveAdapters(IReadOnlyList<string> names)
    {
        _active.Clear();
        _active.AddRange(names.Where(_order.Contains));
    }

    public void SetTrainable(string adapter, bool trainable)
    {
        if (!_order.Contains(adapter)) return;
        foreach (var p in TrainableTensors(adapter)) p.requires_grad = trainable;
    }

    public void DeleteAdapter(string adapter)
    {
        if (!_order.Contains(adapter)) return;
        if (_merged.Contains(adapter)) throw new PeftSharpException($"adapter '{adapter}' is merged; unmerge before deleting it");
        RemoveTensors(adapter);
        _order.Remove(adapter);
        _active.Remove(adapter);
    }

    public void Merge(IEnumerable<string> names)
    {
        using var _ = no_grad();
        foreach (var a in names)
        {
            if (!_order.Contains(a) || _merged.Contains(a)) continue;
            using var scope = NewDisposeScope();
            var w = BaseWeight;
            w.add_(MergeDelta(a, w.dtype == ScalarType.Float64 ? ScalarType.Float64 : ScalarType.Float32).to(w.dtype));
            _merged.Add(a);
        }
    }

    public void Unmerge()
    {
        using var _ = no_grad();
        while (_merged.Count > 0)
        {
            var a = _merged[^1];
            using var scope = NewDisposeScope();
            var w = BaseWeight;
            w.sub_(MergeDelta(a, w.dtype == ScalarType.Float64 ? ScalarType.Float64 : ScalarType.Float32).to(w.dtype));
            _merged.RemoveAt(_merged.Count - 1);
        }
    }

    public abstract IEnumerable<(string Key, Tensor Value)> AdapterState(string adapter);
    public abstract bool LoadAdapterState(string adapter, string key, Tensor value);

    public override Tensor forward(Tensor x)
    {
        if (AdaptersDisabled || _merged.Count > 0 || _active.Count == 0 && RowAdapters is null) return base_layer.call(x);
        using var scope = NewDisposeScope();
        var result = base_layer.call(x);
        var resultType = result.dtype;
        if (RowAdapters is { } rows)
        {
            if (training) throw new PeftSharpException("mixed-adapter batches are for inference: call eval() first (peft refuses them in training mode)");
            foreach (var name in rows.Distinct.Where(_order.Contains))
            {
                var idx = rows.Rows(name);
                result = result.index_add(0, idx, AdapterOutput(name, x.index_select(0, idx)).to(resultType), 1);
            }
            return result.MoveToOuterDisposeScope();
        }
        foreach (var name in _active) result = result + AdapterOutput(name, x);
        return result.to(resultType).MoveToOuterDisposeScope();
    }

    protected Tensor Dropout(Tensor x, double p) => p > 0 && training ? nn.functional.dropout(x, p, true) : x;

    /// <summary>Copies <paramref name="value"/> into <paramref name="target"/> after a shape check.</summary>
    protected static bool CopyChecked(Tensor target, Tensor value, string key)
    {
        if (!target.shape.SequenceEqual(value.shape))
            throw new PeftFormatException(null, $"adapter tensor '{key}' has shape [{string.Join(", ", value.shape)}], the layer expects [{string.Join(", ", target.shape)}] (r or target module mismatch)");
        using (no_grad()) target.copy_(value);
        return true;
    }
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
