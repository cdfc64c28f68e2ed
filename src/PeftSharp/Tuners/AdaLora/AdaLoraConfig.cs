using System.Globalization;
using System.Text.Json.Nodes;
using PeftSharp.Tuners.Lora;

namespace PeftSharp.Tuners.AdaLora;

/// <summary>
/// peft's <c>AdaLoraConfig</c> (a LoraConfig plus the rank-allocation fields, peft-spec §8.1). The LoRA fields live
/// in <see cref="Lora"/>; <c>r</c> is ignored (every matrix starts at <see cref="InitR"/>).
/// </summary>
public sealed record AdaLoraConfig : PeftConfig
{
    public override string PeftType => "ADALORA";

    /// <summary>The inherited LoRA fields (target_modules, lora_alpha, lora_dropout, ...).</summary>
    public LoraConfig Lora { get; init; } = new();
    public int TargetR { get; init; } = 8;
    public int InitR { get; init; } = 12;
    public int Tinit { get; init; }
    public int Tfinal { get; init; }
    public int DeltaT { get; init; } = 1;
    public double Beta1 { get; init; } = 0.85;
    public double Beta2 { get; init; } = 0.85;
    public double OrthRegWeight { get; init; } = 0.5;
    /// <summary>total_step: required for training (the budget schedule needs it).</summary>
    public int? TotalStep { get; init; }
    /// <summary>rank_pattern: module path + ".lora_E" → which of the init_r singular values are kept (null until allocated).</summary>
    public IReadOnlyDictionary<string, bool[]>? RankPattern { get; init; }

    /// <summary>Scaling numerator: lora_alpha, or init_r when lora_alpha is 0 (peft does not divide by r here).</summary>
    public double Scaling => Lora.LoraAlpha > 0 ? Lora.LoraAlpha : InitR;

    static readonly string[] OwnKeys = { "target_r", "init_r", "tinit", "tfinal", "deltaT", "beta1", "beta2", "orth_reg_weight", "total_step", "rank_pattern" };
    static readonly string[] CommonKeys = { "auto_mapping", "base_model_name_or_path", "inference_mode", "peft_type", "peft_version", "revision", "task_type" };

    public void Validate(string source = "AdaLoraConfig")
    {
        if (InitR is <= 0 or > AdapterSize.MaxRank || TargetR is <= 0 or > AdapterSize.MaxRank)
            throw new PeftConfigException($"{source}: 'init_r' and 'target_r' must be integers in 1..{AdapterSize.MaxRank}; found init_r={InitR}, target_r={TargetR}");
        if (Tinit < 0 || Tfinal < 0) throw new PeftConfigException($"{source}: 'tinit' and 'tfinal' must be >= 0; found tinit={Tinit}, tfinal={Tfinal}");
        if (!double.IsFinite(OrthRegWeight) || OrthRegWeight < 0) throw new PeftConfigException($"{source}: 'orth_reg_weight' must be a finite number >= 0; found {OrthRegWeight}");
        if (DeltaT <= 0) throw new PeftConfigException($"{source}: 'deltaT' must be positive; found {DeltaT}");
        if (Beta1 is <= 0 or >= 1 || Beta2 is <= 0 or >= 1) throw new PeftConfigException($"{source}: beta1 and beta2 must be in (0, 1); found {Beta1}, {Beta2}");
        if (Lora.UseDora) throw new PeftConfigException($"{source}: AdaLoRA does not support DoRA (use_dora)");
        if (TotalStep is { } t && (t <= 0 || Tinit >= t - Tfinal))
            throw new PeftConfigException($"{source}: total_step must be > 0 and tinit < total_step - tfinal; found total_step={t}, tinit={Tinit}, tfinal={Tfinal}");
    }

    /// <summary>Training needs total_step (peft raises the same at get_peft_model).</summary>
    public int RequireTotalStep() => TotalStep ?? throw new PeftConfigException("AdaLoRA: 'total_step' must be set to the number of training steps");

    public static AdaLoraConfig FromJson(JsonObject json, string source)
    {
        var loraJson = (JsonObject)json.DeepClone();
        foreach (var k in OwnKeys) loraJson.Remove(k);
        loraJson["peft_type"] = "LORA";
        var lora = LoraConfig.FromJson(loraJson, source);
        var r = new ConfigReader(json, source);
        r.Accept(loraJson.Select(kv => kv.Key).ToArray());
        var c = ReadCommon(new AdaLoraConfig(), r) with
        {
            Lora = lora,
            TargetR = r.Int("target_r", 8),
            InitR = r.Int("init_r", 12),
            Tinit = r.Int("tinit", 0),
            Tfinal = r.Int("tfinal", 0),
            DeltaT = r.Int("deltaT", 1),
            Beta1 = r.Double("beta1", 0.85),
            Beta2 = r.Double("beta2", 0.85),
            OrthRegWeight = r.Double("orth_reg_weight", 0.5),
            TotalStep = r.Has("total_step") ? r.Int("total_step", 0) : null,
            RankPattern = ReadPattern(r.Node("rank_pattern"), source),
        };
        c.Validate(source);
        return c;
    }

    static Dictionary<string, bool[]>? ReadPattern(JsonNode? n, string source)
    {
        if (n is null) return null;
        if (n is not JsonObject o) throw new PeftConfigException($"{source}: 'rank_pattern' must be an object of boolean lists; found {n.ToJsonString()}");
        var d = new Dictionary<string, bool[]>(StringComparer.Ordinal);
        foreach (var (k, v) in o)
            d[k] = v is JsonArray a && a.All(x => x is JsonValue xv && xv.TryGetValue<bool>(out _))
                ? a.Select(x => x!.GetValue<bool>()).ToArray()
                : throw new PeftConfigException($"{source}: rank_pattern['{k}'] must be a list of booleans; found {v?.ToJsonString() ?? "null"}");
        return d;
    }

    protected override void WriteFields(JsonObject o)
    {
        foreach (var (k, v) in Lora.ToJson())
            if (!CommonKeys.Contains(k)) o[k] = v?.DeepClone();
        o["target_r"] = TargetR;
        o["init_r"] = InitR;
        o["tinit"] = Tinit;
        o["tfinal"] = Tfinal;
        o["deltaT"] = DeltaT;
        o["beta1"] = Beta1;
        o["beta2"] = Beta2;
        o["orth_reg_weight"] = OrthRegWeight;
        o["total_step"] = TotalStep;
        if (RankPattern is null) o["rank_pattern"] = null;
        else
        {
            var p = new JsonObject();
            foreach (var (k, v) in RankPattern) p[k] = new JsonArray(v.Select(b => (JsonNode?)JsonValue.Create(b)).ToArray());
            o["rank_pattern"] = p;
        }
    }

    public override string ToString() =>
        string.Create(CultureInfo.InvariantCulture, $"AdaLoraConfig(init_r={InitR}, target_r={TargetR}, lora_alpha={Lora.LoraAlpha}, total_step={TotalStep}, target_modules={Lora.TargetModules?.ToString() ?? "default"})");
}
