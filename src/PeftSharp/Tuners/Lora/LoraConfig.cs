using System.Globalization;
using System.Text.Json.Nodes;

namespace PeftSharp.Tuners.Lora;

/// <summary>
/// peft's <c>LoraConfig</c> with its field names and defaults (peft-spec §3.1). Fields PeftSharp does not
/// implement are kept as read so a saved adapter round-trips; a non-default value for a feature that would change
/// the math (layer_replication, target_parameters, ...) is refused instead of being silently ignored.
/// </summary>
public sealed record LoraConfig : PeftConfig
{
    public override string PeftType => "LORA";

    /// <summary>r: the rank.</summary>
    public int R { get; init; } = 8;
    /// <summary>lora_alpha: scaling numerator.</summary>
    public double LoraAlpha { get; init; } = 8;
    public double LoraDropout { get; init; }
    /// <summary>target_modules: regex (full match), list (exact or '.'-suffix), "all-linear", or null (model default).</summary>
    public StringOrList? TargetModules { get; init; }
    public StringOrList? ExcludeModules { get; init; }
    /// <summary>fan_in_fan_out: weight stored [in, out]; forced true for GPT-2 Conv1D targets.</summary>
    public bool FanInFanOut { get; init; }
    /// <summary>bias: "none", "all" or "lora_only".</summary>
    public string Bias { get; init; } = "none";
    public bool UseRsLora { get; init; }
    public IReadOnlyList<string>? ModulesToSave { get; init; }
    /// <summary>init_lora_weights as peft writes it: "true", "false" or "gaussian" (JSON true/false/"gaussian").</summary>
    public string InitLoraWeights { get; init; } = "true";
    public int[]? LayersToTransform { get; init; }
    public StringOrList? LayersPattern { get; init; }
    /// <summary>rank_pattern: regex-key → r, first match wins (file order).</summary>
    public IReadOnlyList<KeyValuePair<string, double>> RankPattern { get; init; } = Array.Empty<KeyValuePair<string, double>>();
    public IReadOnlyList<KeyValuePair<string, double>> AlphaPattern { get; init; } = Array.Empty<KeyValuePair<string, double>>();
    public bool UseDora { get; init; }
    public bool LoraBias { get; init; }

    /// <summary>peft fields without an effect here, with peft 0.20's defaults (kept for round-tripping).</summary>
    public JsonObject Passthrough { get; init; } = DefaultPassthrough();

    static JsonObject DefaultPassthrough() => new()
    {
        ["alora_invocation_tokens"] = null,
        ["arrow_config"] = null,
        ["corda_config"] = null,
        ["ensure_weight_tying"] = false,
        ["eva_config"] = null,
        ["layer_replication"] = null,
        ["loftq_config"] = new JsonObject(),
        ["lora_ga_config"] = null,
        ["megatron_config"] = null,
        ["megatron_core"] = "megatron.core",
        ["monteclora_config"] = null,
        ["qalora_group_size"] = 16,
        ["target_parameters"] = null,
        ["trainable_token_indices"] = null,
        ["use_bdlora"] = null,
        ["use_qalora"] = false,
        ["velora_config"] = null,
    };

    // Passthrough fields whose non-default value changes the model: refused rather than ignored.
    static readonly string[] Unsupported =
        { "alora_invocation_tokens", "arrow_config", "layer_replication", "megatron_config", "target_parameters", "trainable_token_indices", "use_bdlora", "velora_config", "monteclora_config" };

    /// <summary>r and lora_alpha for one module (rank_pattern/alpha_pattern, peft's get_pattern_key).</summary>
    public (int R, double Alpha) RankAndAlphaFor(string moduleName)
    {
        int r = R;
        double alpha = LoraAlpha;
        if (TargetMatcher.PatternKey(RankPattern.Select(kv => kv.Key), moduleName) is { } rk) r = (int)RankPattern.First(kv => kv.Key == rk).Value;
        if (TargetMatcher.PatternKey(AlphaPattern.Select(kv => kv.Key), moduleName) is { } ak) alpha = AlphaPattern.First(kv => kv.Key == ak).Value;
        return (r, alpha);
    }

    public void Validate(string source = "LoraConfig")
    {
        if (R is <= 0 or > AdapterSize.MaxRank) throw new PeftConfigException($"{source}: 'r' must be an integer in 1..{AdapterSize.MaxRank}; found {R}");
        if (!double.IsFinite(LoraAlpha)) throw new PeftConfigException($"{source}: 'lora_alpha' must be a finite number; found {LoraAlpha}");
        if (LayersToTransform?.Where(l => l is < 0 or >= AdapterSize.MaxLayers).Select(l => (int?)l).FirstOrDefault() is int bad)
            throw new PeftConfigException($"{source}: 'layers_to_transform' entries must be layer indices in 0..{AdapterSize.MaxLayers - 1}; found {bad}");
        if (Bias is not ("none" or "all" or "lora_only")) throw new PeftConfigException($"{source}: 'bias' must be none, all or lora_only; found '{Bias}'");
        if (LoraDropout is < 0 or >= 1) throw new PeftConfigException($"{source}: 'lora_dropout' must be in [0, 1); found {LoraDropout}");
        if (InitLoraWeights is not ("true" or "false" or "gaussian"))
            throw new PeftConfigException($"{source}: init_lora_weights '{InitLoraWeights}' is not supported (supported: true, false, gaussian)");
        if (LayersPattern is not null && LayersToTransform is null)
            throw new PeftConfigException($"{source}: 'layers_pattern' needs 'layers_to_transform'");
        if (TargetModules is { IsString: true } && !IsAllLinear && (LayersToTransform is not null || LayersPattern is not null))
            throw new PeftConfigException($"{source}: layers_to_transform/layers_pattern cannot be used with a regex target_modules");
        if (LoraBias) throw new PeftConfigException($"{source}: 'lora_bias' true is not supported by PeftSharp");
        if (Passthrough["use_qalora"] is JsonValue q && q.TryGetValue<bool>(out var qa) && qa)
            throw new PeftConfigException($"{source}: 'use_qalora' true is not supported by PeftSharp");
        foreach (var key in Unsupported)
        {
            var v = Passthrough[key];
            bool isDefault = v is null || v is JsonValue jv && jv.TryGetValue<bool>(out var b) && !b || v is JsonArray { Count: 0 };
            if (!isDefault) throw new PeftConfigException($"{source}: '{key}' = {v!.ToJsonString()} is not supported by PeftSharp");
        }
        foreach (var (k, v) in RankPattern)
            if (v <= 0 || v > AdapterSize.MaxRank || v != Math.Floor(v)) throw new PeftConfigException($"{source}: rank_pattern['{k}'] must be an integer in 1..{AdapterSize.MaxRank}; found {v}");
        foreach (var (k, v) in AlphaPattern)
            if (!double.IsFinite(v)) throw new PeftConfigException($"{source}: alpha_pattern['{k}'] must be a finite number; found {v}");
    }

    public bool IsAllLinear => TargetModules is { IsString: true } t && string.Equals(t.Pattern, TargetMatcher.AllLinear, StringComparison.OrdinalIgnoreCase);

    public TargetSpec Targets => new()
    {
        Targets = TargetModules ?? throw new PeftConfigException("LoRA: target_modules is not resolved"),
        Exclude = ExcludeModules,
        ModulesToSave = ModulesToSave,
        LayersToTransform = LayersToTransform,
        LayersPattern = LayersPattern,
    };

    public static LoraConfig FromJson(JsonObject json, string source)
    {
        var r = new ConfigReader(json, source);
        var init = r.Node("init_lora_weights");
        var c = ReadCommon(new LoraConfig(), r) with
        {
            R = r.Int("r", 8),
            LoraAlpha = r.Double("lora_alpha", 8),
            LoraDropout = r.Double("lora_dropout", 0),
            TargetModules = r.StringOrList("target_modules"),
            ExcludeModules = r.StringOrList("exclude_modules"),
            FanInFanOut = r.Bool("fan_in_fan_out", false),
            Bias = r.String("bias") ?? "none",
            UseRsLora = r.Bool("use_rslora", false),
            ModulesToSave = r.StringOrList("modules_to_save") is { } m ? (m.IsString ? new[] { m.Pattern! } : m.Items) : null,
            InitLoraWeights = init switch
            {
                null => "true",
                JsonValue v when v.TryGetValue<bool>(out var b) => b ? "true" : "false",
                JsonValue v when v.TryGetValue<string>(out var s) => s,
                _ => throw new PeftConfigException($"{source}: 'init_lora_weights' must be true, false or a string; found {init.ToJsonString()}"),
            },
            LayersToTransform = r.IntOrList("layers_to_transform"),
            LayersPattern = r.StringOrList("layers_pattern"),
            RankPattern = r.NumberMap("rank_pattern"),
            AlphaPattern = r.NumberMap("alpha_pattern"),
            UseDora = r.Bool("use_dora", false),
            LoraBias = r.Bool("lora_bias", false),
        };
        var passthrough = DefaultPassthrough();
        foreach (var key in passthrough.Select(kv => kv.Key).ToList())
            if (json.ContainsKey(key)) passthrough[key] = r.Node(key);
        r.Accept("runtime_config", "kasa_config");
        PeftMethods.WarnUnknown(r);
        c = c with { Passthrough = passthrough };
        c.Validate(source);
        return c;
    }

    static JsonNode? Number(double v) => v == Math.Floor(v) && Math.Abs(v) < 1e15 ? JsonValue.Create((long)v) : JsonValue.Create(v);

    static JsonObject Map(IReadOnlyList<KeyValuePair<string, double>> m)
    {
        var o = new JsonObject();
        foreach (var (k, v) in m) o[k] = Number(v);
        return o;
    }

    protected override void WriteFields(JsonObject o)
    {
        foreach (var (k, v) in Passthrough) o[k] = v?.DeepClone();
        o["r"] = R;
        o["lora_alpha"] = Number(LoraAlpha);
        o["lora_dropout"] = LoraDropout;
        o["target_modules"] = TargetModules?.ToJson();
        o["exclude_modules"] = ExcludeModules?.ToJson();
        o["fan_in_fan_out"] = FanInFanOut;
        o["bias"] = Bias;
        o["use_rslora"] = UseRsLora;
        o["modules_to_save"] = ModulesToSave is null ? null : new JsonArray(ModulesToSave.Select(m => (JsonNode?)JsonValue.Create(m)).ToArray());
        o["init_lora_weights"] = InitLoraWeights switch { "true" => true, "false" => false, var s => s };
        o["layers_to_transform"] = LayersToTransform is null ? null : new JsonArray(LayersToTransform.Select(i => (JsonNode?)JsonValue.Create(i)).ToArray());
        o["layers_pattern"] = LayersPattern?.ToJson();
        o["rank_pattern"] = Map(RankPattern);
        o["alpha_pattern"] = Map(AlphaPattern);
        o["use_dora"] = UseDora;
        o["lora_bias"] = LoraBias;
    }

    public override string ToString() =>
        string.Create(CultureInfo.InvariantCulture, $"LoraConfig(r={R}, lora_alpha={LoraAlpha}, target_modules={TargetModules?.ToString() ?? "default"}, use_rslora={UseRsLora}, use_dora={UseDora})");
}
