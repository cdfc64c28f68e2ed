using System.Text.Json.Nodes;
using PeftSharp.Models;
using PeftSharp.Tuners.BitFit;
using PeftSharp.Tuners.Bottleneck;

namespace PeftSharp.Tuners.AdapterHub;

/// <summary>
/// The adapter family's <c>finetuning_type</c> values for <c>peft train</c> YAML: a config from the YAML keys, and the
/// AdapterFusion stage. Keys use AdapterHub's config names (reduction_factor, non_linearity, leave_out, ...).
/// <list type="bullet">
/// <item><c>adapter</c>: <c>adapter_config</c> = seq_bn (default) | double_seq_bn | par_bn | scaled_par_bn, plus any BnConfig key.</item>
/// <item><c>mam</c>: prefix (prefix_length 30, bottleneck_size 800) + par_bn; keys prefix_length, bottleneck_size, reduction_factor, scaling.</item>
/// <item><c>unipelt</c>: gated prefix + gated seq_bn + gated LoRA; keys prefix_length (10), bottleneck_size, reduction_factor, lora_rank (8), lora_alpha (2).</item>
/// <item><c>bitfit</c>: keys target_modules (bias-less projections that get a bias).</item>
/// </list>
/// </summary>
public static class AdapterFamilyTypes
{
    public static IReadOnlyList<string> Names { get; } = new[] { "adapter", "bitfit", "mam", "unipelt" };

    public static bool IsFamily(string finetuningType) => Names.Contains(finetuningType);

    static JsonObject Overlay(JsonObject baseJson, IReadOnlyDictionary<string, JsonNode?> keys, IEnumerable<string> allowed)
    {
        foreach (var k in allowed)
            if (keys.TryGetValue(k, out var v)) baseJson[k] = v?.DeepClone();
        // Re-parsed so values built in code (JsonValue of an int) read like values from a file.
        return (JsonObject)JsonNode.Parse(baseJson.ToJsonString())!;
    }

    static readonly string[] BnKeys =
    {
        "reduction_factor", "non_linearity", "original_ln_before", "original_ln_after", "residual_before_ln", "adapter_residual_before_ln",
        "ln_before", "ln_after", "mh_adapter", "output_adapter", "is_parallel", "scaling", "use_gating", "init_weights", "dropout", "leave_out",
    };

    public static PeftConfig Create(string finetuningType, IReadOnlyDictionary<string, JsonNode?> keys, string source = "train config")
    {
        BottleneckConfig Bn(BottleneckConfig preset) =>
            BottleneckConfig.Parse(new ConfigReader(Overlay(preset.ToJson(), keys, BnKeys), source));
        HubPrefixConfig Prefix(HubPrefixConfig preset) => HubPrefixConfig.Parse(new ConfigReader(Overlay(
            preset.ToJson(), keys, new[] { "prefix_length", "bottleneck_size" }), source));
        double Num(string k, double fallback) => keys.TryGetValue(k, out var v) && v is JsonValue j && j.TryGetValue<double>(out var d) ? d : fallback;

        switch (finetuningType)
        {
            case "adapter":
            {
                var name = keys.TryGetValue("adapter_config", out var n) && n is not null ? n.GetValue<string>() : "seq_bn";
                var preset = BottleneckConfig.Preset(name) ?? throw new PeftConfigException($"{source}: adapter_config '{name}' is not one of seq_bn, double_seq_bn, par_bn, scaled_par_bn");
                return AdapterHubConfig.Of(Bn(preset));
            }
            case "mam":
                // AdapterHub's MAMConfig: PrefixTuningConfig(bottleneck_size=800) + ParBnConfig().
                return AdapterHubConfig.Of(Prefix(new HubPrefixConfig { BottleneckSize = 800 }), Bn(BottleneckConfig.ParBn()));
            case "unipelt":
            {
                int r = (int)Num("lora_rank", 8);
                // AdapterHub's UniPELTConfig: gated PrefixTuningConfig(prefix_length=10), SeqBnConfig(reduction_factor=16), LoRAConfig(r=8, alpha=2).
                return AdapterHubConfig.Of(Prefix(new HubPrefixConfig { PrefixLength = 10, UseGating = true }), Bn(BottleneckConfig.SeqBn() with { UseGating = true }),
                    new HubLoraConfig { R = r, Alpha = Num("lora_alpha", 2), UseGating = true });
            }
            case "bitfit":
                return keys.TryGetValue("target_modules", out var t) && t is not null
                    ? BitFitConfig.FromJson(new JsonObject { ["peft_type"] = BitFitConfig.Type, ["target_modules"] = t.DeepClone() }, source)
                    : new BitFitConfig();
            default:
                throw new PeftConfigException($"{source}: finetuning_type '{finetuningType}' is not an adapter-family type ({string.Join(", ", Names)})");
        }
    }

    /// <summary>
    /// Per-step training hooks from the YAML: <c>robust_adapter_drop</c> (finetuning_type adapter) = true (up to
    /// num_layers - 1 blocks dropped per step, as AdapterHub's AdapterDrop example) or the most blocks to drop.
    /// </summary>
    public static IReadOnlyList<ITrainingCallback> TrainingCallbacks(PeftModel peft, string finetuningType, IReadOnlyDictionary<string, JsonNode?> keys, int seed)
    {
        if (!keys.TryGetValue("robust_adapter_drop", out var v) || v is null) return Array.Empty<ITrainingCallback>();
        if (finetuningType != "adapter") throw new PeftConfigException($"robust_adapter_drop applies to finetuning_type adapter (bottleneck adapters), not '{finetuningType}'");
        int layers = peft.Model.Config.NumHiddenLayers;
        var text = v.ToJsonString();
        int? max = v.GetValueKind() switch
        {
            System.Text.Json.JsonValueKind.True => layers - 1,
            System.Text.Json.JsonValueKind.False => null,
            System.Text.Json.JsonValueKind.Number when int.TryParse(text, out var n) => n,
            _ => throw new PeftConfigException($"robust_adapter_drop must be true/false or the most layers to drop; got {text}"),
        };
        return max is int m ? new[] { new RobustAdapterDrop(peft, m, seed) } : Array.Empty<ITrainingCallback>();
    }

    static readonly string[] PrefixKeys = { "prefix_length", "bottleneck_size" };

    /// <summary>The keys each type reads (AdapterHub's config names).</summary>
    static string[] KeysOf(string finetuningType) => finetuningType switch
    {
        "adapter" => ["adapter_config", .. BnKeys, "adapter_fusion", "robust_adapter_drop"],
        "mam" or "unipelt" => [.. PrefixKeys, .. BnKeys],
        "bitfit" => ["target_modules"],
        _ => throw new ArgumentException(finetuningType),
    };

    /// <summary>
    /// The finetuning_type <paramref name="name"/>: a new adapter from its keys (UniPELT's LoRA part from lora_rank /
    /// lora_alpha), or for <c>adapter</c> with adapter_fusion the fusion stage over trained folders (saving the fusion).
    /// </summary>
    public static Recipe Recipe(string name) => new(name)
    {
        Keys = KeysOf(name),
        Validate = (k, s) => Create(name, k.Values, s.Source),
        Config = ctx => Config(name, ctx),
        Create = name == "adapter" ? FusionFromRecipe : null,
        Hooks = (peft, k, s) => new MethodHooks
        {
            Callbacks = TrainingCallbacks(peft, name, k.Values, s.Seed),
            Save = k.Has("adapter_fusion") ? SaveFusion(peft) : null,
        },
    };

    static PeftConfig Config(string name, RecipeContext ctx)
    {
        var keys = ctx.Keys.Values;
        if (name == "unipelt")
            keys = new Dictionary<string, JsonNode?>(keys) { ["lora_rank"] = ctx.Settings.LoraRank, ["lora_alpha"] = ctx.Settings.LoraAlpha ?? 2 };
        var config = Create(name, keys, ctx.Keys.Source);
        return config with { BaseModelNameOrPath = ctx.ModelDir, TaskType = config.TaskType ?? (ctx.Model.IsCausalLM ? null : "SEQ_CLS") };
    }

    static PeftModel? FusionFromRecipe(RecipeContext ctx)
    {
        if (ctx.Keys["adapter_fusion"] is not { } fusion) return null;
        var dirs = (fusion as JsonArray ?? throw new PeftConfigException($"{ctx.Keys.Source}: adapter_fusion must be a list of adapter folders"))
            .Select(d => ctx.ResolvePath(d!.GetValue<string>())).ToList();
        return FusionStage(ctx.Model, dirs);
    }

    static Action<string> SaveFusion(PeftModel fused)
    {
        var names = fused.Adapters.ToList();
        return dir => HubAdapters.SaveFusion(fused, dir, names);
    }

    /// <summary>
    /// AdapterFusion as one methods-benchmark row: two fresh seq_bn adapters under a dynamic fusion layer, trained jointly
    /// (AdapterHub's train_adapter_fusion with unfreeze_adapters), so the row costs one training run rather than three.
    /// </summary>
    static readonly string[] BenchFused = { "default", "b" };

    static PeftModel JointFusion(PreTrainedModel m)
    {
        var bn = new Dictionary<string, JsonNode?> { ["adapter_config"] = "seq_bn" };
        var peft = PeftModel.Create(m, Create("adapter", bn, "methods bench"));
        peft.AddAdapter(BenchFused[1], Create("adapter", bn, "methods bench"));
        HubAdapters.AddFusion(peft, BenchFused);
        HubAdapters.TrainFusion(peft, BenchFused);
        foreach (var (_, layer) in peft.AdapterLayers())
            foreach (var a in layer.Adapters) layer.SetTrainable(a, true);
        return peft;
    }

    static BenchEntry Row(string name, string finetuningType, Func<int, Dictionary<string, JsonNode?>>? keys = null, double lr = 1e-2) =>
        new(name, "adapter", lr) { Recipe = finetuningType, Keys = keys is null ? null : (_, layers) => keys(layers) };

    /// <summary>The adapter family's rows of the methods benchmark (AdapterHub presets; AdapterDrop leaves out the first third of the layers).</summary>
    public static readonly IReadOnlyList<BenchEntry> HubBench = new[]
    {
        Row("seq_bn (Pfeiffer)", "adapter", _ => new() { ["adapter_config"] = "seq_bn" }),
        Row("double_seq_bn (Houlsby)", "adapter", _ => new() { ["adapter_config"] = "double_seq_bn" }),
        // Parallel adapters add to the layer's output unscaled by its norm (par_bn ×4): at 5e-3, the bottom of a 1e-2
        // sweep, they fell to 12 % at 8M parameters and 0 % at 30M.
        Row("par_bn", "adapter", _ => new() { ["adapter_config"] = "par_bn" }, 2.5e-3),
        Row("scaled_par_bn", "adapter", _ => new() { ["adapter_config"] = "scaled_par_bn" }, 2.5e-3),
        Row("AdapterDrop (seq_bn)", "adapter", layers => new()
        {
            ["adapter_config"] = "seq_bn",
            ["leave_out"] = new JsonArray(Enumerable.Range(0, Math.Max(1, layers / 3)).Select(i => (JsonNode?)i).ToArray()),
        }),
        new BenchEntry("AdapterFusion (2 x seq_bn)", "adapter", 1e-2)
        {
            Create = JointFusion,
            Loss = (p, l) => HubAdapters.FusionRegularization(p, BenchFused) is { } r ? l + r : l,
        },
        Row("MAM", "mam", lr: 2.5e-3),
        Row("UniPELT", "unipelt"),
    };

    public static readonly BenchEntry BitFitBench = Row("BitFit", "bitfit");

    /// <summary>
    /// The AdapterFusion stage (<c>adapter_fusion: [dir, dir, ...]</c>): loads the trained AdapterHub adapters under
    /// their folder names, adds a dynamic fusion layer over them and makes only it trainable.
    /// </summary>
    public static PeftModel FusionStage(PreTrainedModel model, IReadOnlyList<string> adapterDirs, FusionConfig? config = null)
    {
        if (adapterDirs.Count < 2) throw new PeftConfigException($"adapter_fusion needs at least two adapter folders; got {adapterDirs.Count}");
        var names = adapterDirs.Select(d => Path.GetFileName(Path.TrimEndingDirectorySeparator(d))).ToList();
        if (names.Distinct().Count() != names.Count) throw new PeftConfigException($"adapter_fusion folders must have distinct names; got {string.Join(", ", names)}");
        var peft = PeftModel.FromPretrained(model, adapterDirs[0], names[0]);
        for (int i = 1; i < names.Count; i++) peft.LoadAdapter(adapterDirs[i], names[i]);
        HubAdapters.AddFusion(peft, names, config);
        HubAdapters.TrainFusion(peft, names);
        peft.train();
        return peft;
    }
}
