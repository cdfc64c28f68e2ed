using System.Text.Json.Nodes;
using PeftSharp.Models;
using TorchSharp;
using static TorchSharp.torch;

namespace PeftSharp.Tuners.IA3;

/// <summary>
/// (IA)³ (Liu et al., 2205.05638; peft's IA3Model): an <see cref="IA3Linear"/> on every target; targets in
/// feedforward_modules scale their input, the others their output. Without target_modules / feedforward_modules the
/// model type's peft defaults apply (llama: k_proj, v_proj, down_proj with down_proj feed-forward).
/// </summary>
public sealed class IA3Method : IPeftMethod, IWeightedCombination
{
    public string PeftType => IA3Config.Type;

    public IReadOnlyList<Recipe> Recipes { get; } = new[] { IA3Recipe.Recipe };
    /// <summary>Rows of one batch may each use their own vectors (peft itself has no mixed batches for IA3).</summary>
    public MethodCapabilities Capabilities { get; } = new() { MixedBatch = true };
    public IReadOnlyList<BenchEntry> Bench { get; } = new[] { IA3Recipe.Bench };

    /// <summary>peft's TRANSFORMERS_MODELS_TO_IA3_TARGET_MODULES_MAPPING and ..._FEEDFORWARD_MODULES_MAPPING for the architectures here.</summary>
    static readonly Dictionary<string, (string[] Targets, string[] Feedforward)> Defaults = new()
    {
        ["llama"] = (new[] { "k_proj", "v_proj", "down_proj" }, new[] { "down_proj" }),
        ["mistral"] = (new[] { "k_proj", "v_proj", "down_proj" }, new[] { "down_proj" }),
        ["qwen2"] = (new[] { "q_proj", "v_proj", "down_proj" }, new[] { "down_proj" }),
        ["qwen3"] = (new[] { "q_proj", "v_proj", "down_proj" }, new[] { "down_proj" }),
        ["gpt2"] = (new[] { "c_attn", "mlp.c_proj" }, new[] { "mlp.c_proj" }),
        ["bert"] = (new[] { "key", "value", "output.dense" }, new[] { "output.dense" }),
        ["roberta"] = (new[] { "key", "value", "output.dense" }, new[] { "output.dense" }),
    };

    public PeftConfig ParseConfig(JsonObject json, string source) => IA3Config.FromJson(json, source);

    static IA3Config Cast(PeftConfig c) => c as IA3Config ?? throw new PeftConfigException($"IA3 expects an IA3Config; got {c.GetType().Name}");

    static bool Supports(nn.Module m) => IA3Linear.CanWrap(m) || m is IA3Linear;

    public PeftConfig Prepare(PreTrainedModel model, PeftConfig config)
    {
        var c = Cast(config);
        c.Validate();
        Defaults.TryGetValue(model.Config.ModelType, out var defaults);
        c = c with
        {
            TargetModules = c.TargetModules is { } t ? VariantPreparation.ResolveTargets(model, t, c.TaskType, "IA3")
                : defaults.Targets is { } dt ? StringOrList.Of(dt)
                : throw new PeftConfigException($"IA3: target_modules is not set and there is no default for model_type '{model.Config.ModelType}'; give target_modules"),
            FeedforwardModules = c.FeedforwardModules ?? (defaults.Feedforward is { } df ? StringOrList.Of(df)
                : throw new PeftConfigException($"IA3: feedforward_modules is not set and there is no default for model_type '{model.Config.ModelType}'; give feedforward_modules")),
        };
        // The task head trains fully, as peft's PeftModelForSequenceClassification adds it to modules_to_save.
        if (c.TaskType is "SEQ_CLS" or "TOKEN_CLS")
            c = c with { ModulesToSave = [.. c.ModulesToSave ?? [], .. new[] { "classifier", "score" }.Where(h => c.ModulesToSave?.Contains(h) != true)] };
        // peft forces fan_in_fan_out to true for Conv1D targets and to false for Linear ones (with a warning).
        bool conv1D = TargetMatcher.Resolve(model, c.Targets, Supports, "IA3").Select(n => ModuleSurgery.Get(model, n))
            .Any(m => m is Conv1D || m is IA3Linear { FanInFanOut: true });
        if (conv1D != c.FanInFanOut)
            PeftMethods.Warn($"fan_in_fan_out is set to {c.FanInFanOut.ToString().ToLowerInvariant()} but the targets are {(conv1D ? "Conv1D" : "Linear")}; setting it to {conv1D.ToString().ToLowerInvariant()}");
        return c with { FanInFanOut = conv1D };
    }

    /// <summary>One vector per target: its input width (feed-forward) or its output width.</summary>
    public long AdapterElements(PreTrainedModel model, PeftConfig config)
    {
        var c = Cast(config);
        return AdapterSize.Sum(model, TargetMatcher.Resolve(model, c.Targets, Supports, "IA3"), (name, i, o) => c.IsFeedforward(name) ? i : o);
    }

    public IReadOnlyList<string> Inject(PreTrainedModel model, PeftConfig config, string adapterName)
    {
        var c = Cast(config);
        var names = TargetMatcher.Resolve(model, c.Targets, Supports, "IA3");
        foreach (var name in names)
        {
            var module = ModuleSurgery.Get(model, name);
            bool feedforward = c.IsFeedforward(name);
            var layer = module switch
            {
                IA3Linear existing => existing,
                nn.Module<Tensor, Tensor> m when IA3Linear.CanWrap(m) => new IA3Linear(m, feedforward),
                _ => throw new PeftSharpException($"IA3 cannot wrap {name} ({module.GetType().Name})"),
            };
            // As peft: a later adapter takes the layer's orientation (its vector must fit the same side).
            if (layer.IsFeedforward != feedforward)
                PeftMethods.Warn($"IA3: {name} already scales its {(layer.IsFeedforward ? "input" : "output")}; adapter '{adapterName}' does the same there");
            layer.AddAdapter(adapterName, c.InitIa3Weights, !c.InferenceMode);
            if (!ReferenceEquals(layer, module)) ModuleSurgery.Replace(model, name, layer);
        }
        if (c.ModulesToSave is { Count: > 0 } mts) Lora.LoraMethod.WrapModulesToSave(model, mts, adapterName, !c.InferenceMode);
        return names;
    }

    public AdapterDescription Describe(PeftConfig config)
    {
        var c = Cast(config);
        return new(PeftType)
        {
            Lines = new[]
            {
                ("targets", $"{c.TargetModules?.ToString() ?? "default"}{(c.ModulesToSave is { Count: > 0 } m ? $"; modules_to_save {string.Join(", ", m)}" : "")}"),
                ("feedforward", $"{c.FeedforwardModules?.ToString() ?? "default"} (input scaled; the other targets scale their output)"),
            },
            Fields = new JsonObject
            {
                ["target_modules"] = c.TargetModules?.ToString(),
                ["feedforward_modules"] = c.FeedforwardModules?.ToString(),
                ["init_ia3_weights"] = c.InitIa3Weights,
                ["modules_to_save"] = c.ModulesToSave is { } mts ? new JsonArray(mts.Select(x => (JsonNode?)x).ToArray()) : null,
            },
        };
    }

    /// <summary>peft's IA3 add_weighted_adapter takes no combination type: the new vectors are Σ wᵢ·lᵢ.</summary>
    public IReadOnlyList<string> CombinationTypes { get; } = new[] { "linear" };

    /// <summary>
    /// peft's IA3Model.add_weighted_adapter: a new adapter over the union of the sources' target and feed-forward modules
    /// (or their regexes joined by "|"), frozen, whose vector in each layer is Σ wᵢ·lᵢ over the sources that layer holds.
    /// </summary>
    public void AddWeighted(PeftModel peft, IReadOnlyList<string> adapters, IReadOnlyList<double> weights, string newName, string combinationType, int? svdRank)
    {
        if (weights.Count != adapters.Count) throw new PeftSharpException($"add_weighted_adapter: {adapters.Count} adapters but {weights.Count} weights");
        if (combinationType is not ("linear" or "svd") || svdRank is not null)
            PeftMethods.Warn($"IA3's add_weighted_adapter sums the weighted vectors; combination_type '{combinationType}'{(svdRank is null ? "" : " and svd_rank")} do not apply");
        if (peft.Configs.ContainsKey(newName))
        {
            PeftMethods.Warn($"adapter '{newName}' already exists; add_weighted_adapter does nothing (as peft)");
            return;
        }
        var configs = adapters.Select(a => peft.Configs.TryGetValue(a, out var c) ? c as IA3Config ?? throw new PeftSharpException($"adapter '{a}' is not an IA3 adapter")
            : throw new PeftSharpException($"Adapter {a} does not exist")).ToList();
        var saved = configs.SelectMany(c => c.ModulesToSave ?? []).GroupBy(m => m).Where(g => g.Count() > 1).Select(g => g.Key).ToList();
        if (saved.Count > 0) throw new PeftSharpException($"Cannot add weighted adapters targeting the same module with modules_to_save ({string.Join(", ", saved)})");
        var config = configs[0] with
        {
            TargetModules = Union(configs.Select(c => c.TargetModules!), "target_modules"),
            FeedforwardModules = Union(configs.Select(c => c.FeedforwardModules!), "feedforward_modules"),
            InferenceMode = true,
        };
        peft.AddAdapter(newName, config);
        using var _ = no_grad();
        foreach (var (_, layer) in peft.AdapterLayers())
        {
            if (layer is not IA3Linear ia3 || !ia3.Has(newName)) continue;
            var target = ia3.Vector(newName);
            target.zero_();
            for (int i = 0; i < adapters.Count; i++)
                if (ia3.Has(adapters[i])) target.add_(ia3.Vector(adapters[i]) * weights[i]);
        }
    }

    // peft's _check_add_weighted_adapter: lists are united, regexes joined as alternatives; the kinds must agree.
    static StringOrList Union(IEnumerable<StringOrList> specs, string field)
    {
        var list = specs.ToList();
        if (list.Select(s => s.IsString).Distinct().Count() > 1)
            throw new PeftSharpException($"All adapter configs should have the same type for target and feedforward modules ({field} mixes a regex and a list)");
        return list[0].IsString ? StringOrList.Of(string.Join("|", list.Select(s => $"({s.Pattern})"))) : StringOrList.Of(list.SelectMany(s => s.Items!).Distinct());
    }
}
