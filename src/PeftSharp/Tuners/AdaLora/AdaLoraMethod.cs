using System.Text.Json.Nodes;
using PeftSharp.Models;
using PeftSharp.Tuners.Lora;
using TorchSharp;
using static TorchSharp.torch;

namespace PeftSharp.Tuners.AdaLora;

/// <summary>
/// AdaLoRA's injection rule (peft-spec §8): an SVD-style adapter of rank init_r on every target; a module named in
/// rank_pattern is created at its kept rank (peft's resize on load), ranknum staying init_r.
/// </summary>
public sealed class AdaLoraMethod : IPeftMethod
{
    public string PeftType => "ADALORA";

    public IReadOnlyList<Recipe> Recipes { get; } = new[] { AdaLoraRecipe.Recipe };
    public MethodCapabilities Capabilities { get; } = new() { MixedBatch = true };
    public IReadOnlyList<BenchEntry> Bench { get; } = new[] { AdaLoraRecipe.Bench };

    public AdapterDescription Describe(PeftConfig config)
    {
        var c = Cast(config);
        return new(PeftType)
        {
            Lines = new[] { ("targets", $"{c.Lora.TargetModules}"), ("rank", $"init_r={c.InitR}, target_r={c.TargetR}, lora_alpha={c.Lora.LoraAlpha}") },
            Fields = new JsonObject { ["target_modules"] = c.Lora.TargetModules?.ToString(), ["init_r"] = c.InitR, ["target_r"] = c.TargetR, ["lora_alpha"] = c.Lora.LoraAlpha },
        };
    }

    public PeftConfig ParseConfig(JsonObject json, string source) => AdaLoraConfig.FromJson(json, source);

    static AdaLoraConfig Cast(PeftConfig c) => c as AdaLoraConfig ?? throw new PeftConfigException($"AdaLoRA expects an AdaLoraConfig; got {c.GetType().Name}");

    static bool Supports(nn.Module m) => LinearAdapterLayer.IsLinear(m) || m is AdaLoraLinear;

    public PeftConfig Prepare(PreTrainedModel model, PeftConfig config)
    {
        var c = Cast(config);
        c.Validate();
        if (!c.InferenceMode) c.RequireTotalStep();
        var lora = c.Lora with { TargetModules = VariantPreparation.ResolveTargets(model, c.Lora.TargetModules, c.TaskType, "AdaLoRA") };
        lora = lora with { FanInFanOut = VariantPreparation.FanInFanOut(model, lora.Targets, Supports, "AdaLoRA", lora.FanInFanOut) };
        return c with { Lora = lora };
    }

    /// <summary>P [init_r, in], Q [out, init_r] and the init_r singular values per target.</summary>
    public long AdapterElements(PreTrainedModel model, PeftConfig config)
    {
        var c = Cast(config);
        return AdapterSize.Sum(model, TargetMatcher.Resolve(model, c.Lora.Targets, Supports, "AdaLoRA"), (_, i, o) => AdapterSize.Mul(c.InitR, i + o + 1));
    }

    public IReadOnlyList<string> Inject(PreTrainedModel model, PeftConfig config, string adapterName)
    {
        var c = Cast(config);
        var trainable = !c.InferenceMode;
        if (trainable && model.named_modules().Any(m => m.module is AdaLoraLinear a && a.Adapters.Count > 0))
            PeftMethods.Warn("AdaLoRA supports one trainable adapter per model; the earlier adapters stay frozen");
        var names = TargetMatcher.Resolve(model, c.Lora.Targets, Supports, "AdaLoRA");
        foreach (var name in names)
        {
            var module = ModuleSurgery.Get(model, name);
            var layer = module switch
            {
                AdaLoraLinear existing => existing,
                nn.Module<Tensor, Tensor> m when LinearAdapterLayer.IsLinear(m) => new AdaLoraLinear(m),
                _ => throw new PeftSharpException($"AdaLoRA cannot wrap {name} ({module.GetType().Name})"),
            };
            int r = c.InitR;
            if (c.RankPattern is { } rp && rp.TryGetValue(name + ".lora_E", out var keep))
            {
                if (keep.Length != c.InitR) throw new PeftConfigException($"AdaLoRA: rank_pattern['{name}.lora_E'] has {keep.Length} entries; init_r is {c.InitR}");
                r = keep.Count(k => k);
            }
            layer.AddAdapter(adapterName, r, c.InitR, c.Scaling, c.Lora.LoraDropout, c.Lora.InitLoraWeights != "false", trainable);
            if (!ReferenceEquals(layer, module)) ModuleSurgery.Replace(model, name, layer);
        }
        if (c.Lora.ModulesToSave is { Count: > 0 } mts) LoraMethod.WrapModulesToSave(model, mts, adapterName, trainable);
        return names;
    }
}
