using System.Globalization;
using System.Text.Json.Nodes;

namespace PeftSharp.Tuners.IA3;

/// <summary>
/// peft's <c>IA3Config</c> (peft-spec §11.1): which modules get a learned scaling vector, and which of them are
/// feed-forward (their input is scaled) rather than attention-like (their output is scaled).
/// </summary>
public sealed record IA3Config : PeftConfig
{
    public const string Type = "IA3";
    public override string PeftType => Type;

    public StringOrList? TargetModules { get; init; }
    public StringOrList? ExcludeModules { get; init; }
    /// <summary>Targets that scale their input: a list (a module whose name ends with an entry, no dot boundary) or a regex (full match).</summary>
    public StringOrList? FeedforwardModules { get; init; }
    public bool FanInFanOut { get; init; }
    public IReadOnlyList<string>? ModulesToSave { get; init; }
    /// <summary>init_ia3_weights: true → every vector starts at ones (the base model); false → N(0, 1).</summary>
    public bool InitIa3Weights { get; init; } = true;

    public TargetSpec Targets => new()
    {
        Targets = TargetModules ?? throw new PeftConfigException("IA3: target_modules is not resolved"),
        Exclude = ExcludeModules,
        ModulesToSave = ModulesToSave,
    };

    /// <summary>peft's _check_target_module_feedforward for module <paramref name="key"/>.</summary>
    public bool IsFeedforward(string key) => FeedforwardModules switch
    {
        null => false,
        { IsString: true } f => TargetMatcher.FullMatch(f.Pattern!, key),
        var f => f.Items!.Any(m => key.EndsWith(m, StringComparison.Ordinal)),
    };

    public void Validate(string source = "IA3Config")
    {
        if (TargetModules is { IsString: false } t && FeedforwardModules is { IsString: false } f && f.Items!.Except(t.Items!).ToList() is { Count: > 0 } extra)
            throw new PeftConfigException($"{source}: feedforward_modules must be a subset of target_modules; {string.Join(", ", extra)} is not a target");
    }

    public static IA3Config FromJson(JsonObject json, string source)
    {
        var r = new ConfigReader(json, source);
        var c = ReadCommon(new IA3Config(), r) with
        {
            TargetModules = r.StringOrList("target_modules"),
            ExcludeModules = r.StringOrList("exclude_modules"),
            FeedforwardModules = r.StringOrList("feedforward_modules"),
            FanInFanOut = r.Bool("fan_in_fan_out", false),
            ModulesToSave = r.StringOrList("modules_to_save") is { } m ? (m.IsString ? new[] { m.Pattern! } : m.Items) : null,
            InitIa3Weights = r.Bool("init_ia3_weights", true),
        };
        PeftMethods.WarnUnknown(r);
        c.Validate(source);
        return c;
    }

    protected override void WriteFields(JsonObject o)
    {
        o["target_modules"] = TargetModules?.ToJson();
        o["exclude_modules"] = ExcludeModules?.ToJson();
        o["feedforward_modules"] = FeedforwardModules?.ToJson();
        o["fan_in_fan_out"] = FanInFanOut;
        o["modules_to_save"] = ModulesToSave is null ? null : new JsonArray(ModulesToSave.Select(m => (JsonNode?)JsonValue.Create(m)).ToArray());
        o["init_ia3_weights"] = InitIa3Weights;
    }

    public override string ToString() =>
        string.Create(CultureInfo.InvariantCulture, $"IA3Config(target_modules={TargetModules?.ToString() ?? "default"}, feedforward_modules={FeedforwardModules?.ToString() ?? "default"})");
}
