using System.Globalization;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;
using static TorchSharp.torch.nn;

namespace PeftSharp.Tuners;

/// <summary>One adapted module in a parameter report.</summary>
/// <param name="Module">Module path relative to the model.</param>
/// <param name="Kind">"lora", "dora" or "modules_to_save".</param>
/// <param name="WeightElements">Elements of the module's weight(s) (what a merge may touch).</param>
/// <param name="ChangedElements">Elements whose merged value differs from the base value (W' != W, in the weight's dtype).</param>
/// <param name="AdapterElements">Elements of this adapter's own tensors in the module.</param>
/// <param name="R">Configured rank (0 for modules_to_save).</param>
/// <param name="DeltaRank">Matrix rank of ΔW = W' − W (−1 for modules_to_save).</param>
public sealed record ModuleDelta(string Module, string Kind, long[] WeightShape, long WeightElements, long ChangedElements, long AdapterElements, int R, long DeltaRank);

/// <summary>
/// Three explicit counts that papers mix up, plus HF's numbers: trainable parameters, parameters of the merged model
/// that differ from the base, and the rank of each ΔW.
/// </summary>
public sealed record AdapterParameterReport(
    string Adapter,
    long TrainableParameters,
    long AllParameters,
    long AdapterParameters,
    long MergedChangedParameters,
    long TargetedWeightParameters,
    IReadOnlyList<ModuleDelta> Modules)
{
    /// <summary>HF's print_trainable_parameters line for the same counts.</summary>
    public string HfLine => ParameterAccounting.FormatTrainable(TrainableParameters, AllParameters);
}

public static class ParameterAccounting
{
    /// <summary>"trainable params: 1,234 || all params: 5,678 || trainable%: 21.7330" (Python's {:,} and {:.4f}).</summary>
    public static string FormatTrainable(long trainable, long all) =>
        string.Create(CultureInfo.InvariantCulture, $"trainable params: {trainable:N0} || all params: {all:N0} || trainable%: {(all == 0 ? 0 : 100.0 * trainable / all):F4}");

    /// <summary>
    /// Rank of <paramref name="left"/>·<paramref name="right"/> ([m, r]·[r, n]) from the factors: with left = Q₁R₁ and
    /// rightᵀ = Q₂R₂, the product Q₁(R₁R₂ᵀ)Q₂ᵀ has the singular values of the r×r core R₁R₂ᵀ, so an r×r SVD replaces
    /// an m×n one. Computed in float64 with matrix_rank's tolerance for an m×n matrix of the factors' dtype
    /// (σ_max · max(m, n) · ε of float32 for float32 factors): below it, singular values are their rounding noise.
    /// </summary>
    public static long FactorRank(Tensor left, Tensor right)
    {
        using var scope = NewDisposeScope();
        using var _ = no_grad();
        long m = left.shape[0], n = right.shape[1];
        var (_, r1) = linalg.qr(left.detach().to(ScalarType.Float64));
        var (_, r2) = linalg.qr(right.detach().to(ScalarType.Float64).t());
        var sv = linalg.svdvals(r1.matmul(r2.t()));
        if (sv.numel() == 0) return 0;
        double eps = left.dtype switch
        {
            ScalarType.Float64 => Math.Pow(2, -52),
            ScalarType.BFloat16 => Math.Pow(2, -7),
            ScalarType.Float16 => Math.Pow(2, -10),
            _ => Math.Pow(2, -23),
        };
        var tol = sv.max() * (Math.Max(m, n) * eps);
        return sv.gt(tol).sum().item<long>();
    }

    /// <summary>Builds the report for one adapter without changing the model (ΔW is computed, not merged).</summary>
    public static AdapterParameterReport Report(PeftModel peft, string adapter)
    {
        if (!peft.Configs.ContainsKey(adapter)) throw new PeftSharpException($"adapter '{adapter}' does not exist");
        var (trainable, all) = peft.TrainableParameterCounts();
        var modules = new List<ModuleDelta>();
        using (no_grad())
        {
            foreach (var (name, layer) in peft.AdapterLayers())
            {
                if (!layer.Adapters.Contains(adapter)) continue;
                using var scope = NewDisposeScope();
                long own = layer.AdapterState(adapter).Sum(t => t.Value.numel());
                switch (layer)
                {
                    case Lora.LoraLayer lora:
                    {
                        var w = lora.BaseWeight;
                        var merged = lora.MergedWeight(adapter);
                        var changed = merged.to(w.dtype).ne(w).sum().item<long>();
                        // Plain LoRA: from the factors (no d×d SVD, and no W' − W whose rounding would fill the rank up).
                        // DoRA: W' − W in float64, so float32 rounding does not fill it up.
                        long rank = lora.DeltaFactors(adapter) is var (left, right)
                            ? FactorRank(left, right)
                            : linalg.matrix_rank(lora.MergedWeight(adapter, ScalarType.Float64) - w.to(ScalarType.Float64)).item<long>();
                        var s = lora.SettingsOf(adapter);
                        modules.Add(new ModuleDelta(name, s.Variant.Kind, w.shape, w.numel(), changed, own, s.R, rank));
                        break;
                    }
                    case IDeltaWeightLayer variant:
                    {
                        var w = variant.BaseWeight;
                        var delta = variant.DeltaWeight(adapter, ScalarType.Float64);
                        var changed = (w.to(ScalarType.Float64) + delta).to(w.dtype).ne(w).sum().item<long>();
                        long rank = variant.DeltaFactors(adapter) is var (left, right) ? FactorRank(left, right) : linalg.matrix_rank(delta).item<long>();
                        modules.Add(new ModuleDelta(name, variant.Kind, w.shape, w.numel(), changed, own, variant.RankOf(adapter), rank));
                        break;
                    }
                    case ModulesToSaveWrapper wrapper:
                    {
                        var original = wrapper.BaseLayer.state_dict();
                        long changed = 0, elements = 0;
                        foreach (var (k, v) in wrapper.AdapterState(adapter))
                        {
                            elements += v.numel();
                            if (original.TryGetValue(k, out var o)) changed += v.ne(o).sum().item<long>();
                        }
                        var shape = original.TryGetValue("weight", out var ow) ? ow.shape : Array.Empty<long>();
                        modules.Add(new ModuleDelta(name, "modules_to_save", shape, elements, changed, own, 0, -1));
                        break;
                    }
                    default:
                        // Layers that are not merged into a weight (bottleneck slots, prefixes): only their own size.
                        modules.Add(new ModuleDelta(name, layer.GetType().Name, Array.Empty<long>(), 0, 0, own, 0, -1));
                        break;
                }
            }
            // A prompt learner changes no weight: its own tensors are what it trains (and saves, possibly reparameterized).
            if (peft.ActiveAdapter == adapter && peft.ActivePromptLearner is { } learner)
            {
                long own = learner.parameters().Sum(p => p.numel());
                modules.Add(new ModuleDelta("prompt_encoder." + adapter, "prompt_learning", Array.Empty<long>(), 0, 0, own, 0, -1));
            }
        }
        return new AdapterParameterReport(adapter, trainable, all,
            modules.Sum(m => m.AdapterElements), modules.Sum(m => m.ChangedElements), modules.Sum(m => m.WeightElements), modules);
    }
}
