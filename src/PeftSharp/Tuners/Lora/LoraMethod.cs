using System.Text.Json.Nodes;
using PeftSharp.Models;
using PeftSharp.Quantization;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace PeftSharp.Tuners.Lora;

/// <summary>LoRA's injection rule: which modules get which wrapper, with which rank, alpha and init.</summary>
public sealed class LoraMethod : IPeftMethod, IWeightedCombination
{
    public string PeftType => "LORA";

    public IReadOnlyList<Recipe> Recipes { get; } = new[] { LoraRecipes.Lora, LoraFa.LoraFaRecipe.Recipe };
    public MethodCapabilities Capabilities { get; } = new() { MixedBatch = true };
    public AdapterDescription Describe(PeftConfig config) => LoraRecipes.Describe(PeftType, Cast(config));
    public IReadOnlyList<BenchEntry> Bench { get; } = [.. LoraRecipes.Bench.Take(3), LoraFa.LoraFaRecipe.Bench, .. LoraRecipes.Bench.Skip(3)];

    public IReadOnlyList<string> CombinationTypes => LoraWeighted.CombinationTypes;

    public void AddWeighted(PeftModel peft, IReadOnlyList<string> adapters, IReadOnlyList<double> weights, string newName, string combinationType, int? svdRank) =>
        LoraWeighted.Add(peft, adapters, weights, newName, combinationType, svdRank);

    public PeftConfig ParseConfig(JsonObject json, string source) => LoraConfig.FromJson(json, source);

    static LoraConfig Cast(PeftConfig c) => c as LoraConfig ?? throw new PeftConfigException($"LoRA expects a LoraConfig; got {c.GetType().Name}");

    /// <summary>Modules LoRA can wrap (or already wrapped ones, which get one more adapter).</summary>
    public static bool Supports(nn.Module m) => m is Linear or Conv1D or Linear4bit or Embedding or LoraLayer;

    public PeftConfig Prepare(PreTrainedModel model, PeftConfig config)
    {
        var c = Cast(config);
        c.Validate();
        if (c.TargetModules is null)
        {
            if (!TargetMatcher.DefaultTargets.TryGetValue(model.Config.ModelType, out var defaults))
                throw new PeftConfigException($"LoRA: target_modules is not set and there is no default for model_type '{model.Config.ModelType}'; give target_modules");
            c = c with { TargetModules = StringOrList.Of(defaults) };
        }
        if (c.IsAllLinear)
            c = c with { TargetModules = StringOrList.Of(TargetMatcher.ExpandAllLinear(model, c.TaskType)) };
        var heads = c.TaskType switch
        {
            "SEQ_CLS" or "TOKEN_CLS" => new[] { "classifier", "score" },
            "QUESTION_ANS" => new[] { "qa_outputs" },
            _ => Array.Empty<string>(),
        };
        if (heads.Length > 0) c = c with { ModulesToSave = (c.ModulesToSave ?? Array.Empty<string>()).Concat(heads.Where(h => c.ModulesToSave?.Contains(h) != true)).ToList() };

        // peft forces fan_in_fan_out per layer type and the saved config shows the forced value.
        var targets = TargetMatcher.Resolve(model, c.Targets, Supports, "LoRA").Select(n => ModuleSurgery.Get(model, n)).ToList();
        bool anyConv1D = targets.Any(t => t is Conv1D || t is LoraLinear { FanInFanOut: true });
        if (anyConv1D && !c.FanInFanOut)
        {
            PeftMethods.Warn("fan_in_fan_out is set to false but the target is a Conv1D (GPT-2 style); setting fan_in_fan_out to true");
            c = c with { FanInFanOut = true };
        }
        else if (!anyConv1D && c.FanInFanOut && targets.Any(t => t is Linear or Linear4bit))
        {
            PeftMethods.Warn("fan_in_fan_out is set to true but the target is a Linear; setting fan_in_fan_out to false");
            c = c with { FanInFanOut = false };
        }
        return c;
    }

    public long AdapterElements(PreTrainedModel model, PeftConfig config)
    {
        var c = Cast(config);
        // A [r, in], B [out, r]; DoRA adds a magnitude per output.
        return AdapterSize.Sum(model, TargetMatcher.Resolve(model, c.Targets, Supports, "LoRA"),
            (name, i, o) => AdapterSize.Mul(c.RankAndAlphaFor(name).R, i + o) + (c.UseDora ? o : 0));
    }

    public IReadOnlyList<string> Inject(PreTrainedModel model, PeftConfig config, string adapterName)
    {
        var c = Cast(config);
        var names = TargetMatcher.Resolve(model, c.Targets, Supports, "LoRA");
        var trainable = !c.InferenceMode;
        foreach (var name in names)
        {
            var module = ModuleSurgery.Get(model, name);
            var (r, alpha) = c.RankAndAlphaFor(name);
            var settings = new LoraAdapterSettings(r, alpha, c.LoraDropout, c.UseRsLora, c.UseDora, c.InitLoraWeights);
            var layer = module switch
            {
                LoraLayer existing => existing,
                Linear or Conv1D or Linear4bit => new LoraLinear((nn.Module<Tensor, Tensor>)module),
                Embedding e => (LoraLayer)new LoraEmbedding(e),
                _ => throw new PeftSharpException($"LoRA cannot wrap {name} ({module.GetType().Name})"),
            };
            layer.AddAdapter(adapterName, settings, trainable);
            if (!ReferenceEquals(layer, module)) ModuleSurgery.Replace(model, name, layer);
        }
        if (c.ModulesToSave is { Count: > 0 } mts) WrapModulesToSave(model, mts, adapterName, trainable);
        return names;
    }

    /// <summary>
    /// peft's _set_trainable: every module whose name ends with an entry (plain suffix, no dot boundary) gets a
    /// trainable copy for this adapter.
    /// </summary>
    internal static void WrapModulesToSave(PreTrainedModel model, IReadOnlyList<string> entries, string adapterName, bool trainable)
    {
        var matches = TargetMatcher.Candidates(model).Where(c => entries.Any(e => c.Name.EndsWith(e, StringComparison.Ordinal))).ToList();
        foreach (var (name, module) in matches)
        {
            if (module is ModulesToSaveWrapper w) { w.AddAdapter(adapterName, trainable); continue; }
            if (module is not nn.Module<Tensor, Tensor> m)
                throw new PeftConfigException($"modules_to_save: '{name}' is a {module.GetType().Name}, which cannot be wrapped");
            var wrapper = new ModulesToSaveWrapper(m);
            wrapper.AddAdapter(adapterName, trainable);
            ModuleSurgery.Replace(model, name, wrapper);
        }
    }
}
