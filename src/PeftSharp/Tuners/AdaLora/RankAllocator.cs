using TorchSharp;
using static TorchSharp.torch;

namespace PeftSharp.Tuners.AdaLora;

/// <summary>
/// AdaLoRA's budget allocation (peft's RankAllocator + AdaLoraModel.update_and_allocate, peft-spec §8.4–8.5): smoothed
/// sensitivity × uncertainty of every entry of A, E, B; a cubic budget schedule between tinit and total_step − tfinal;
/// singular values E[i] whose triplet score is among the lowest are zeroed, and the kept set is recorded as
/// rank_pattern (saved in adapter_config.json, and saving prunes to it). Call <see cref="OnStepEnd"/> after each
/// optimizer step, before the gradients are zeroed; PeftSharp's trainer does so itself.
/// </summary>
public sealed class RankAllocator : IResumableCallback, IDisposable
{
    readonly PeftModel _peft;
    readonly string _adapter;
    readonly List<(string Name, AdaLoraLinear Layer)> _layers;
    readonly Dictionary<Tensor, (Tensor Avg, Tensor Unc)> _ema = new(ReferenceEqualityComparer.Instance);

    public AdaLoraConfig Config => (AdaLoraConfig)_peft.Configs[_adapter];
    /// <summary>Σ rank over the adapted matrices at the start.</summary>
    public int InitBudget { get; }
    /// <summary>target_r × number of adapted matrices.</summary>
    public int TargetBudget { get; }

    public RankAllocator(PeftModel peft, string? adapter = null)
    {
        _peft = peft;
        _adapter = adapter ?? peft.ActiveAdapter;
        if (peft.Configs[_adapter] is not AdaLoraConfig c) throw new PeftConfigException($"adapter '{_adapter}' is not an AdaLoRA adapter");
        c.RequireTotalStep();
        _layers = peft.AdapterLayers().Where(l => l.Layer is AdaLoraLinear a && a.Has(_adapter))
            .Select(l => (l.Name, (AdaLoraLinear)l.Layer)).OrderBy(l => l.Name, StringComparer.Ordinal).ToList();
        if (_layers.Count == 0) throw new PeftSharpException($"AdaLoRA adapter '{_adapter}' has no layers");
        InitBudget = _layers.Sum(l => l.Layer.RankOf(_adapter));
        TargetBudget = c.TargetR * _layers.Count;
    }

    /// <summary>peft's budget_schedule: (budget, whether to mask at this step).</summary>
    public static (int Budget, bool Mask) BudgetSchedule(int step, int initBudget, int targetBudget, int tinit, int tfinal, int totalStep, int deltaT)
    {
        if (step <= tinit) return (initBudget, false);
        if (step > totalStep - tfinal) return (targetBudget, true);
        double c = 1 - (double)(step - tinit) / (totalStep - tfinal - tinit);
        return ((int)((initBudget - targetBudget) * (c * c * c) + targetBudget), step % deltaT == 0);
    }

    public (int Budget, bool Mask) BudgetSchedule(int step)
    {
        var c = Config;
        return BudgetSchedule(step, InitBudget, TargetBudget, c.Tinit, c.Tfinal, c.RequireTotalStep(), c.DeltaT);
    }

    public void OnStepEnd(int globalStep) => UpdateAndAllocate(globalStep);

    /// <summary>update_and_allocate(global_step): returns the rank pattern recorded at this step, or null.</summary>
    public IReadOnlyDictionary<string, bool[]>? UpdateAndAllocate(int globalStep)
    {
        var c = Config;
        int last = c.RequireTotalStep() - c.Tfinal;
        if (globalStep < last)
        {
            UpdateImportance();
            var (budget, mask) = BudgetSchedule(globalStep);
            return mask ? Record(MaskToBudget(budget)) : null;
        }
        if (globalStep == last)
        {
            var pattern = Record(MaskToBudget(BudgetSchedule(globalStep).Budget));
            ResetImportance();
            return pattern;
        }
        if (c.RankPattern is { } stored) ApplyPattern(stored);
        return null;
    }

    void UpdateImportance()
    {
        var c = Config;
        using var _ = no_grad();
        foreach (var (_, layer) in _layers)
            foreach (var p in new Tensor[] { layer.A(_adapter), layer.E(_adapter), layer.B(_adapter) })
            {
                if (p.grad is not { } g) continue;
                using var scope = NewDisposeScope();
                if (!_ema.TryGetValue(p, out var s))
                    s = (zeros_like(p).DetachFromDisposeScope(), zeros_like(p).DetachFromDisposeScope());
                var ipt = (p * g).abs();
                var avg = (c.Beta1 * s.Avg + (1 - c.Beta1) * ipt).DetachFromDisposeScope();
                var unc = (c.Beta2 * s.Unc + (1 - c.Beta2) * (ipt - avg).abs()).DetachFromDisposeScope();
                s.Avg.Dispose();
                s.Unc.Dispose();
                _ema[p] = (avg, unc);
            }
    }

    Tensor Score(Tensor p) => _ema.TryGetValue(p, out var s) ? s.Avg * s.Unc : zeros_like(p);

    /// <summary>Per layer, the triplet score of each singular value: s(E_i) + (mean_j s(A_ij) + mean_o s(B_oi)).</summary>
    public IReadOnlyList<(string Name, Tensor Score)> TripletScores()
    {
        var result = new List<(string, Tensor)>();
        foreach (var (name, layer) in _layers)
        {
            var ab = Score(layer.A(_adapter)).mean(new long[] { 1 }) + Score(layer.B(_adapter)).mean(new long[] { 0 });
            result.Add((name, Score(layer.E(_adapter)).view(-1) + ab));
        }
        return result;
    }

    Dictionary<string, bool[]> MaskToBudget(int budget)
    {
        using var _ = no_grad();
        using var scope = NewDisposeScope();
        var scores = TripletScores();
        int k = InitBudget - budget;
        double threshold = k <= 0 ? double.NegativeInfinity : cat(scores.Select(s => s.Score).ToArray()).kthvalue(k, 0).values.item<float>();
        var pattern = new Dictionary<string, bool[]>(StringComparer.Ordinal);
        foreach (var ((name, layer), (_, score)) in _layers.Zip(scores))
        {
            var drop = score.le(threshold);
            layer.E(_adapter).masked_fill_(drop.view(-1, 1), 0.0);
            pattern[name + ".lora_E"] = drop.logical_not().data<bool>().ToArray();
        }
        return pattern;
    }

    Dictionary<string, bool[]> Record(Dictionary<string, bool[]> pattern)
    {
        _peft.UpdateConfig(_adapter, Config with { RankPattern = pattern });
        foreach (var (name, layer) in _layers) layer.SetPattern(_adapter, pattern[name + ".lora_E"]);
        return pattern;
    }

    void ApplyPattern(IReadOnlyDictionary<string, bool[]> pattern)
    {
        using var _ = no_grad();
        foreach (var (name, layer) in _layers)
        {
            if (!pattern.TryGetValue(name + ".lora_E", out var keep)) continue;
            using var scope = NewDisposeScope();
            var drop = tensor(keep.Select(k => !k).ToArray(), device: layer.E(_adapter).device).view(-1, 1);
            layer.E(_adapter).masked_fill_(drop, 0.0);
        }
    }

    IEnumerable<(string Key, Tensor Param)> Matrices() =>
        _layers.SelectMany(l => new[] { ($"{l.Name}.lora_A", (Tensor)l.Layer.A(_adapter)), ($"{l.Name}.lora_E", l.Layer.E(_adapter)), ($"{l.Name}.lora_B", l.Layer.B(_adapter)) });

    /// <summary>The importance averages (ipt_avg./ipt_unc. + matrix name) and the recorded rank pattern (rank_pattern. + key).</summary>
    public IEnumerable<KeyValuePair<string, Tensor>> SaveState()
    {
        foreach (var (key, p) in Matrices())
            if (_ema.TryGetValue(p, out var s))
            {
                yield return new($"ipt_avg.{key}", s.Avg);
                yield return new($"ipt_unc.{key}", s.Unc);
            }
        if (Config.RankPattern is { } pattern)
            foreach (var (key, keep) in pattern)
                yield return new($"rank_pattern.{key}", tensor(keep));
    }

    public void LoadState(IReadOnlyDictionary<string, Tensor> state)
    {
        ResetImportance();
        foreach (var (key, p) in Matrices())
            if (state.TryGetValue($"ipt_avg.{key}", out var avg) && state.TryGetValue($"ipt_unc.{key}", out var unc))
                _ema[p] = (avg.to(p.dtype, p.device, copy: true).DetachFromDisposeScope(), unc.to(p.dtype, p.device, copy: true).DetachFromDisposeScope());
        const string prefix = "rank_pattern.";
        var pattern = state.Where(kv => kv.Key.StartsWith(prefix, StringComparison.Ordinal))
            .ToDictionary(kv => kv.Key[prefix.Length..], kv => kv.Value.to(ScalarType.Bool).data<bool>().ToArray(), StringComparer.Ordinal);
        if (pattern.Count > 0) Record(pattern);
    }

    void ResetImportance()
    {
        foreach (var (a, u) in _ema.Values) { a.Dispose(); u.Dispose(); }
        _ema.Clear();
    }

    public void Dispose() => ResetImportance();
}

/// <summary>AdaLoRA's orthogonality regularizer (peft-spec §8.3), which the training loss must include.</summary>
public static class AdaLoraRegularizer
{
    /// <summary>mean over the adapter's A and B matrices of ‖AAᵀ − I‖_F and ‖BᵀB − I‖_F (not squared; empty matrices skipped).</summary>
    public static Tensor OrthogonalPenalty(PeftModel peft, string? adapter = null)
    {
        adapter ??= peft.ActiveAdapter;
        using var scope = NewDisposeScope();
        var terms = new List<Tensor>();
        foreach (var (_, l) in peft.AdapterLayers())
        {
            if (l is not AdaLoraLinear layer || !layer.Has(adapter) || layer.RankOf(adapter) == 0) continue;
            var a = layer.A(adapter);
            var b = layer.B(adapter);
            var aat = a.matmul(a.t());
            var btb = b.t().matmul(b);
            terms.Add(linalg.norm(aat - eye(aat.shape[0], dtype: aat.dtype, device: aat.device)));
            terms.Add(linalg.norm(btb - eye(btb.shape[0], dtype: btb.dtype, device: btb.device)));
        }
        if (terms.Count == 0) return zeros(Array.Empty<long>()).MoveToOuterDisposeScope();
        return (stack(terms.ToArray()).sum() / terms.Count).MoveToOuterDisposeScope();
    }

    /// <summary>loss + orth_reg_weight · penalty, as peft's AdaLoraModel.forward adds it.</summary>
    public static Tensor AddTo(Tensor loss, PeftModel peft, string? adapter = null)
    {
        adapter ??= peft.ActiveAdapter;
        var c = (AdaLoraConfig)peft.Configs[adapter];
        using var penalty = OrthogonalPenalty(peft, adapter);
        return loss + c.OrthRegWeight * penalty;
    }
}
