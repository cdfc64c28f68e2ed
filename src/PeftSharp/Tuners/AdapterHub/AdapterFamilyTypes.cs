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
    public static IReadOnlyList<Training.ITrainingCallback> TrainingCallbacks(PeftModel peft, string finetuningType, IReadOnlyDictionary<string, JsonNode?> keys, int seed)
    {
        if (!keys.TryGetValue("robust_adapter_drop", out var v) || v is null) return Array.Empty<Training.ITrainingCallback>();
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
        return max is int m ? new[] { new RobustAdapterDrop(peft, m, seed) } : Array.Empty<Training.ITrainingCallback>();
    }

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
