using System.Text.Json.Nodes;
using PeftSharp.Models;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace PeftSharp.Tuners.Vera;

/// <summary>
/// VeRA's injection rule (peft-spec §7): one pair of frozen random projections per adapter, sized to the largest
/// targeted layer and shared by all of them; saved once as <c>base_model.vera_A</c>/<c>base_model.vera_B</c>.
/// </summary>
public sealed class VeraMethod : IPeftMethod, IModelLevelState
{
    public string PeftType => "VERA";

    public IReadOnlyList<Recipe> Recipes { get; } = new[] { VeraRecipe.Recipe };
    public MethodCapabilities Capabilities { get; } = new() { MixedBatch = true };
    public IReadOnlyList<BenchEntry> Bench { get; } = new[] { VeraRecipe.Bench };

    public AdapterDescription Describe(PeftConfig config)
    {
        var c = Cast(config);
        return new(PeftType)
        {
            Lines = new[] { ("targets", $"{c.TargetModules}"), ("rank", $"r={c.R} (shared projections), d_initial={c.DInitial}") },
            Fields = new JsonObject { ["target_modules"] = c.TargetModules?.ToString(), ["r"] = c.R },
        };
    }

    public PeftConfig ParseConfig(JsonObject json, string source) => VeraConfig.FromJson(json, source);

    static VeraConfig Cast(PeftConfig c) => c as VeraConfig ?? throw new PeftConfigException($"VeRA expects a VeraConfig; got {c.GetType().Name}");

    static bool Supports(nn.Module m) => LinearAdapterLayer.IsLinear(m) || m is VeraLinear;

    public PeftConfig Prepare(PreTrainedModel model, PeftConfig config)
    {
        var c = Cast(config);
        c.Validate();
        c = c with { TargetModules = VariantPreparation.ResolveTargets(model, c.TargetModules, c.TaskType, "VeRA") };
        c = c with { FanInFanOut = VariantPreparation.FanInFanOut(model, c.Targets, Supports, "VeRA", c.FanInFanOut) };
        return c;
    }

    /// <summary>The shared projections A [r, max in], B [max out, r] plus λ_b [out] and λ_d [r] per target.</summary>
    public long AdapterElements(PreTrainedModel model, PeftConfig config)
    {
        var c = Cast(config);
        var dims = TargetMatcher.Resolve(model, c.Targets, Supports, "VeRA").Select(n => AdapterSize.Dims(ModuleSurgery.Get(model, n))).ToList();
        long shared = dims.Count == 0 ? 0 : AdapterSize.Mul(c.R, dims.Max(d => d.In) + dims.Max(d => d.Out));
        return dims.Aggregate(shared, (sum, d) => AdapterSize.Add(sum, d.Out + c.R));
    }

    public IReadOnlyList<string> Inject(PreTrainedModel model, PeftConfig config, string adapterName)
    {
        var c = Cast(config);
        var names = TargetMatcher.Resolve(model, c.Targets, Supports, "VeRA");
        var modules = names.Select(n => ModuleSurgery.Get(model, n)).ToList();
        var projections = ExistingProjections(model) ?? NewProjections(modules, c);
        if (projections.Seed != c.ProjectionPrngKey)
            throw new PeftConfigException($"VeRA: projection_prng_key must be the same for all adapters; this model's adapters use {projections.Seed}, the new one {c.ProjectionPrngKey}");
        for (int i = 0; i < names.Count; i++)
        {
            var layer = modules[i] switch
            {
                VeraLinear existing => existing,
                nn.Module<Tensor, Tensor> m when LinearAdapterLayer.IsLinear(m) => new VeraLinear(m),
                var other => throw new PeftSharpException($"VeRA cannot wrap {names[i]} ({other.GetType().Name})"),
            };
            layer.AddAdapter(adapterName, projections, c, !c.InferenceMode);
            if (!ReferenceEquals(layer, modules[i])) ModuleSurgery.Replace(model, names[i], layer);
        }
        if (c.ModulesToSave is { Count: > 0 } mts) Lora.LoraMethod.WrapModulesToSave(model, mts, adapterName, !c.InferenceMode);
        return names;
    }

    // peft shares the first adapter's projections with later ones (one pair per model).
    static VeraProjections? ExistingProjections(nn.Module model)
    {
        foreach (var (_, m) in model.named_modules())
            if (m is VeraLinear v && v.Adapters.Count > 0) return v.Projections(v.Adapters[0]);
        return null;
    }

    static VeraProjections NewProjections(IReadOnlyList<nn.Module> targets, VeraConfig c)
    {
        if (targets.Count == 0) throw new PeftConfigException("VeRA: no Linear/Conv1D layer matches target_modules");
        long maxIn = 0, maxOut = 0;
        Device device = CPU;
        foreach (var t in targets)
        {
            var (o, i, w) = t switch
            {
                Linear l => (l.out_features, l.in_features, (Tensor)l.weight!),
                Conv1D cv => (cv.OutFeatures, cv.InFeatures, cv.weight),
                VeraLinear v => (v.OutFeatures, v.InFeatures, v.BaseWeight),
                _ => throw new InvalidOperationException(),
            };
            maxIn = Math.Max(maxIn, i);
            maxOut = Math.Max(maxOut, o);
            device = w.device;
        }
        return VeraProjections.Generate(c.R, maxIn, maxOut, c.ProjectionPrngKey, device);
    }

    public IEnumerable<(string Key, Tensor Value)> ModelState(PeftModel peft, string adapter)
    {
        if (peft.Configs[adapter] is not VeraConfig { SaveProjection: true }) yield break;
        var p = peft.AdapterLayers().Select(l => l.Layer).OfType<VeraLinear>().FirstOrDefault(l => l.Has(adapter))?.Projections(adapter);
        if (p is null) yield break;
        yield return ("base_model.vera_A", p.A);
        yield return ("base_model.vera_B", p.B);
    }

    public bool LoadModelState(PeftModel peft, string adapter, string key, Tensor value)
    {
        if (key is not ("base_model.vera_A" or "base_model.vera_B")) return false;
        var p = peft.AdapterLayers().Select(l => l.Layer).OfType<VeraLinear>().FirstOrDefault(l => l.Has(adapter))?.Projections(adapter)
            ?? throw new PeftFormatException(null, $"'{key}' found but the model has no VeRA layer for adapter '{adapter}'");
        var target = key.EndsWith('A') ? p.A : p.B;
        if (!target.shape.SequenceEqual(value.shape))
            throw new PeftFormatException(null, $"'{key}' has shape [{string.Join(", ", value.shape)}]; the model's targets need [{string.Join(", ", target.shape)}]");
        using (no_grad()) target.copy_(value);
        return true;
    }
}
