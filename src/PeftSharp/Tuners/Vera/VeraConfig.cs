using System.Globalization;
using System.Text.Json.Nodes;

namespace PeftSharp.Tuners.Vera;

/// <summary>peft's <c>VeraConfig</c> with its field names and defaults (peft-spec §7.1).</summary>
public sealed record VeraConfig : PeftConfig
{
    public override string PeftType => "VERA";

    /// <summary>r: rank of the shared projections.</summary>
    public int R { get; init; } = 256;
    public StringOrList? TargetModules { get; init; }
    /// <summary>projection_prng_key: seed of the CPU generator that draws vera_A then vera_B.</summary>
    public long ProjectionPrngKey { get; init; }
    /// <summary>save_projection: store vera_A/vera_B in the adapter file.</summary>
    public bool SaveProjection { get; init; } = true;
    public double VeraDropout { get; init; }
    /// <summary>d_initial: initial value of every λ_d entry.</summary>
    public double DInitial { get; init; } = 0.1;
    public bool FanInFanOut { get; init; }
    public string Bias { get; init; } = "none";
    public IReadOnlyList<string>? ModulesToSave { get; init; }
    /// <summary>init_weights: true → λ_b = 0, λ_d = d_initial; false → λ_b = 1, λ_d ~ N(0, 1).</summary>
    public bool InitWeights { get; init; } = true;
    public int[]? LayersToTransform { get; init; }
    public StringOrList? LayersPattern { get; init; }

    public TargetSpec Targets => new()
    {
        Targets = TargetModules ?? throw new PeftConfigException("VeRA: target_modules is not resolved"),
        ModulesToSave = ModulesToSave,
        LayersToTransform = LayersToTransform,
        LayersPattern = LayersPattern,
    };

    public void Validate(string source = "VeraConfig")
    {
        if (R is <= 0 or > AdapterSize.MaxRank) throw new PeftConfigException($"{source}: 'r' (the shared projections' rank) must be an integer in 1..{AdapterSize.MaxRank}; found {R}");
        if (!double.IsFinite(DInitial)) throw new PeftConfigException($"{source}: 'd_initial' must be a finite number; found {DInitial}");
        if (Bias != "none") throw new PeftConfigException($"{source}: 'bias' = '{Bias}' is not supported by PeftSharp's VeRA (supported: none)");
        if (VeraDropout is < 0 or >= 1) throw new PeftConfigException($"{source}: 'vera_dropout' must be in [0, 1); found {VeraDropout}");
        if (LayersPattern is not null && LayersToTransform is null) throw new PeftConfigException($"{source}: 'layers_pattern' needs 'layers_to_transform'");
    }

    public static VeraConfig FromJson(JsonObject json, string source)
    {
        var r = new ConfigReader(json, source);
        var c = ReadCommon(new VeraConfig(), r) with
        {
            R = r.Int("r", 256),
            TargetModules = r.StringOrList("target_modules"),
            ProjectionPrngKey = r.Long("projection_prng_key", 0),
            SaveProjection = r.Bool("save_projection", true),
            VeraDropout = r.Double("vera_dropout", 0),
            DInitial = r.Double("d_initial", 0.1),
            FanInFanOut = r.Bool("fan_in_fan_out", false),
            Bias = r.String("bias") ?? "none",
            ModulesToSave = r.StringOrList("modules_to_save") is { } m ? (m.IsString ? new[] { m.Pattern! } : m.Items) : null,
            InitWeights = r.Bool("init_weights", true),
            LayersToTransform = r.IntOrList("layers_to_transform"),
            LayersPattern = r.StringOrList("layers_pattern"),
        };
        PeftMethods.WarnUnknown(r);
        c.Validate(source);
        return c;
    }

    protected override void WriteFields(JsonObject o)
    {
        o["r"] = R;
        o["target_modules"] = TargetModules?.ToJson();
        o["projection_prng_key"] = ProjectionPrngKey;
        o["save_projection"] = SaveProjection;
        o["vera_dropout"] = VeraDropout;
        o["d_initial"] = DInitial;
        o["fan_in_fan_out"] = FanInFanOut;
        o["bias"] = Bias;
        o["modules_to_save"] = ModulesToSave is null ? null : new JsonArray(ModulesToSave.Select(m => (JsonNode?)JsonValue.Create(m)).ToArray());
        o["init_weights"] = InitWeights;
        o["layers_to_transform"] = LayersToTransform is null ? null : new JsonArray(LayersToTransform.Select(i => (JsonNode?)JsonValue.Create(i)).ToArray());
        o["layers_pattern"] = LayersPattern?.ToJson();
    }

    public override string ToString() =>
        string.Create(CultureInfo.InvariantCulture, $"VeraConfig(r={R}, target_modules={TargetModules?.ToString() ?? "default"}, projection_prng_key={ProjectionPrngKey}, d_initial={DInitial})");
}
