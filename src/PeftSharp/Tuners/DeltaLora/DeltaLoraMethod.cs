using System.Text.Json.Nodes;
using PeftSharp.Models;
using TorchSharp;
using static TorchSharp.torch;

namespace PeftSharp.Tuners.DeltaLora;

/// <summary>Delta-LoRA's injection rule: a <see cref="DeltaLoraLinear"/> on every LoRA target (Linear/Conv1D).</summary>
public sealed class DeltaLoraMethod : IPeftMethod
{
    public string PeftType => "DELTA_LORA";

    public IReadOnlyList<Recipe> Recipes { get; } = new[] { DeltaLoraRecipe.Recipe };
    public MethodCapabilities Capabilities { get; } = new() { MixedBatch = true };
    public AdapterDescription Describe(PeftConfig config) => Lora.LoraRecipes.Describe(PeftType, Cast(config).Lora);
    public IReadOnlyList<BenchEntry> Bench { get; } = new[] { DeltaLoraRecipe.Bench };

    public PeftConfig ParseConfig(JsonObject json, string source)
    {
        var c = DeltaLoraConfig.FromJson(json, source);
        c.Validate(source);
        return c;
    }

    static DeltaLoraConfig Cast(PeftConfig c) => c as DeltaLoraConfig ?? throw new PeftConfigException($"Delta-LoRA expects a DeltaLoraConfig; got {c.GetType().Name}");

    static bool Supports(nn.Module m) => LinearAdapterLayer.IsLinear(m) || m is DeltaLoraLinear;

    public PeftConfig Prepare(PreTrainedModel model, PeftConfig config)
    {
        var c = Cast(config);
        var lora = c.Lora with { TargetModules = VariantPreparation.ResolveTargets(model, c.Lora.TargetModules, c.TaskType, "Delta-LoRA") };
        if (lora.LoraDropout != 0)
        {
            PeftMethods.Warn($"Delta-LoRA needs lora_dropout 0 (its W update assumes ∂L/∂(BA) = ∂L/∂W); setting it from {lora.LoraDropout} to 0");
            lora = lora with { LoraDropout = 0 };
        }
        lora = lora with { FanInFanOut = VariantPreparation.FanInFanOut(model, lora.Targets, Supports, "Delta-LoRA", lora.FanInFanOut) };
        c = c with { Lora = lora };
        c.Validate();
        return c;
    }

    public long AdapterElements(PreTrainedModel model, PeftConfig config)
    {
        var c = Cast(config);
        return AdapterSize.Sum(model, TargetMatcher.Resolve(model, c.Lora.Targets, Supports, "Delta-LoRA"),
            (name, i, o) => AdapterSize.Mul(c.Lora.RankAndAlphaFor(name).R, i + o));
    }

    public IReadOnlyList<string> Inject(PreTrainedModel model, PeftConfig config, string adapterName)
    {
        var c = Cast(config);
        var names = TargetMatcher.Resolve(model, c.Lora.Targets, Supports, "Delta-LoRA");
        foreach (var name in names)
        {
            var module = ModuleSurgery.Get(model, name);
            var layer = module switch
            {
                DeltaLoraLinear existing => existing,
                nn.Module<Tensor, Tensor> m when LinearAdapterLayer.IsLinear(m) => new DeltaLoraLinear(m),
                _ => throw new PeftSharpException($"Delta-LoRA cannot wrap {name} ({module.GetType().Name})"),
            };
            var (r, alpha) = c.Lora.RankAndAlphaFor(name);
            double scaling = c.Lora.UseRsLora ? alpha / Math.Sqrt(r) : alpha / r;
            layer.AddAdapter(adapterName, r, scaling, c.UpdateRatio, !c.InferenceMode);
            if (!ReferenceEquals(layer, module)) ModuleSurgery.Replace(model, name, layer);
        }
        if (c.Lora.ModulesToSave is { Count: > 0 } mts) Lora.LoraMethod.WrapModulesToSave(model, mts, adapterName, !c.InferenceMode);
        return names;
    }
}

/// <summary>
/// Delta-LoRA's W step, run after every optimizer step (<see cref="ITrainingCallback"/>): from step start_steps on,
/// W += λ·s·(B_{t+1}A_{t+1} − B_tA_t) on each layer, and the (A, B) before step start_steps is kept as the saved
/// snapshot (before that, the snapshot follows the current A, B so the saved telescoped term stays 0). Create it
/// before the first optimizer step. An adapter loaded from a file whose A, B differ from its snapshot has already
/// started: its telescoped part is moved into W and every later step folds, the snapshot staying as loaded.
/// Its resumable state is the snapshot per layer; W is not saved: on resume it is rebuilt from the telescoping
/// identity W = W_0 + λ·s·(B·A − B_K·A_K) (equal to the uninterrupted run's W up to float32 rounding of the sum).
/// </summary>
public sealed class DeltaLoraUpdater : IResumableCallback, IDisposable
{
    readonly string _adapter;
    readonly int _start;
    readonly List<(string Name, DeltaLoraLinear Layer, Tensor PrevA, Tensor PrevB, bool Started)> _layers = new();

    public DeltaLoraUpdater(PeftModel peft, string? adapter = null)
    {
        _adapter = adapter ?? peft.ActiveAdapter;
        var c = peft.Configs[_adapter] as DeltaLoraConfig ?? throw new PeftConfigException($"adapter '{_adapter}' is not a Delta-LoRA adapter");
        _start = c.StartSteps;
        using var _ = no_grad();
        foreach (var (name, l) in peft.AdapterLayers())
        {
            if (l is not DeltaLoraLinear layer || !layer.Has(_adapter)) continue;
            if (layer.MergedAdapters.Count > 0) throw new PeftSharpException("Delta-LoRA training needs unmerged adapters");
            var (a0, b0) = layer.StartSnapshot(_adapter);
            bool started = !(a0.equal(layer.A(_adapter)).all().item<bool>() && b0.equal(layer.B(_adapter)).all().item<bool>());
            if (!layer.Folded(_adapter))
            {
                // From here on W holds the telescoped part and the forward is LoRA's.
                layer.FoldUpdate(_adapter, a0, b0);
                layer.BeginFolding(_adapter);
            }
            _layers.Add((name, layer, layer.A(_adapter).detach().clone().DetachFromDisposeScope(), layer.B(_adapter).detach().clone().DetachFromDisposeScope(), started));
        }
        if (_layers.Count == 0) throw new PeftSharpException($"Delta-LoRA adapter '{_adapter}' has no layers");
    }

    public void OnStepEnd(int globalStep)
    {
        using var _ = no_grad();
        foreach (var (_, layer, prevA, prevB, started) in _layers)
        {
            if (started || globalStep >= _start) layer.FoldUpdate(_adapter, prevA, prevB);
            else layer.SetStartSnapshot(_adapter, layer.A(_adapter), layer.B(_adapter));
            prevA.copy_(layer.A(_adapter));
            prevB.copy_(layer.B(_adapter));
        }
    }

    /// <summary>The (A, B) snapshot of every layer (start_A./start_B. + layer name).</summary>
    public IEnumerable<KeyValuePair<string, Tensor>> SaveState()
    {
        foreach (var (name, layer, _, _, _) in _layers)
        {
            var (a0, b0) = layer.StartSnapshot(_adapter);
            yield return new($"start_A.{name}", a0);
            yield return new($"start_B.{name}", b0);
        }
    }

    /// <summary>
    /// Takes the saved snapshot and re-folds W for the A, B now in the layers: W holds W_0 + λ·s·(prev − snapshot)
    /// before (the invariant every step keeps), λ·s·(B·A − saved snapshot) after.
    /// </summary>
    public void LoadState(IReadOnlyDictionary<string, Tensor> state)
    {
        using var _ = no_grad();
        foreach (var (name, layer, prevA, prevB, _) in _layers)
        {
            if (!state.TryGetValue($"start_A.{name}", out var a0) || !state.TryGetValue($"start_B.{name}", out var b0))
                throw new PeftFormatException(null, $"Delta-LoRA resume: no snapshot for layer '{name}'");
            var (snapA, snapB) = layer.StartSnapshot(_adapter);
            layer.FoldDifference(_adapter, snapA, snapB, prevA, prevB);
            layer.FoldUpdate(_adapter, a0, b0);
            layer.SetStartSnapshot(_adapter, a0, b0);
            prevA.copy_(layer.A(_adapter));
            prevB.copy_(layer.B(_adapter));
        }
    }

    public void Dispose()
    {
        foreach (var (_, _, a, b, _) in _layers) { a.Dispose(); b.Dispose(); }
        _layers.Clear();
    }
}
