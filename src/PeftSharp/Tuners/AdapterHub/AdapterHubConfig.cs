using System.Text.Json;
using System.Text.Json.Nodes;
using PeftSharp.Tuners.Bottleneck;

namespace PeftSharp.Tuners.AdapterHub;

/// <summary>
/// An AdapterHub adapter (adapters 1.x <c>adapter_config.json</c>: <c>{config, hidden_size, model_class, model_name,
/// model_type, name, version}</c>). <c>config</c> is one method or a union (<c>architecture: "union"</c>, as MAM and
/// UniPELT are); its parts are <see cref="BottleneckConfig"/>, <see cref="HubLoraConfig"/> and <see cref="HubPrefixConfig"/>.
/// </summary>
public sealed record AdapterHubConfig : PeftConfig
{
    public const string Type = "ADAPTERHUB";
    public override string PeftType => Type;

    public IReadOnlyList<object> Parts { get; init; } = Array.Empty<object>();
    public string? Name { get; init; }
    public int? HiddenSize { get; init; }
    public string? ModelClass { get; init; }
    public string? ModelName { get; init; }
    public string? ModelType { get; init; }
    public string Version { get; init; } = "adapters.1.2.0";
    /// <summary>The config object as read (written back unchanged); null for configs built in code.</summary>
    public JsonObject? RawConfig { get; init; }

    public static AdapterHubConfig Of(params object[] parts) => new() { Parts = parts };

    /// <summary>One line per part, e.g. "bottleneck seq (rf 16, relu) at output_adapter".</summary>
    public string Describe() => string.Join("; ", Parts.Select(p => p switch
    {
        BottleneckConfig b => $"bottleneck {(b.IsParallel ? "parallel" : "sequential")} (reduction_factor {b.ReductionFactor}, {b.NonLinearity}, scaling {b.Scaling.ToJsonString()}{(b.UseGating ? ", gated" : "")}) at " +
            string.Join("+", new[] { b.MhAdapter ? "mh_adapter" : null, b.OutputAdapter ? "output_adapter" : null }.Where(x => x is not null)) +
            (b.LeaveOut.Count > 0 ? $", leave_out [{string.Join(", ", b.LeaveOut)}]" : ""),
        HubLoraConfig l => $"lora r={l.R} alpha={l.Alpha} on {string.Join(",", l.AttnMatrices)}{(l.IntermediateLora ? "+intermediate" : "")}{(l.OutputLora ? "+output" : "")}{(l.UseGating ? ", gated" : "")}",
        HubPrefixConfig x => $"prefix_tuning length {x.PrefixLength}, bottleneck {x.BottleneckSize}{(x.UseGating ? ", gated" : "")}",
        _ => p.GetType().Name,
    }));

    /// <summary>True for an AdapterHub adapter_config.json (no peft_type; a config object and an adapters version).</summary>
    public static bool Recognizes(JsonObject json) =>
        json["peft_type"] is null && json["config"] is JsonObject && (json["version"]?.ToString().StartsWith("adapters.", StringComparison.Ordinal) == true || json["model_class"] is not null);

    public static AdapterHubConfig FromJson(JsonObject json, string source)
    {
        var r = new ConfigReader(json, source);
        var config = r.Node("config") as JsonObject ?? throw new PeftConfigException($"{source}: 'config' must be an object");
        var parts = new List<object>();
        var arch = config["architecture"]?.GetValue<string>();
        if (arch == "union")
        {
            if (config["configs"] is not JsonArray list) throw new PeftConfigException($"{source}: a union config needs 'configs'");
            foreach (var (item, i) in list.Select((x, i) => (x, i)))
                parts.Add(ParsePart(item as JsonObject ?? throw new PeftConfigException($"{source}: config.configs[{i}] must be an object"), $"{source}: config.configs[{i}]"));
        }
        else parts.Add(ParsePart(config, $"{source}: config"));
        var c = new AdapterHubConfig
        {
            Parts = parts, RawConfig = config,
            Name = r.String("name"), HiddenSize = r.Has("hidden_size") ? r.Int("hidden_size", 0, 1, AdapterSize.MaxWidth) : null,
            ModelClass = r.String("model_class"), ModelName = r.String("model_name"), ModelType = r.String("model_type"),
            Version = r.String("version") ?? "adapters.1.2.0",
        };
        c = c with { BaseModelNameOrPath = c.ModelName };
        PeftMethods.WarnUnknown(r);
        return c;
    }

    static object ParsePart(JsonObject o, string source)
    {
        var r = new ConfigReader(o, source);
        var arch = r.String("architecture") ?? "bottleneck";
        object part = arch switch
        {
            "bottleneck" => BottleneckConfig.Parse(r),
            "lora" => HubLoraConfig.Parse(r),
            "prefix_tuning" => HubPrefixConfig.Parse(r),
            _ => throw new PeftConfigException($"{source}: AdapterHub architecture '{arch}' is not supported by PeftSharp (supported: bottleneck, lora, prefix_tuning, union of them)"),
        };
        PeftMethods.WarnUnknown(r);
        return part;
    }

    JsonObject ConfigJson()
    {
        if (RawConfig is not null) return (JsonObject)RawConfig.DeepClone();
        var parts = Parts.Select(p => p switch
        {
            BottleneckConfig b => b.ToJson(),
            HubLoraConfig l => l.ToJson(),
            HubPrefixConfig x => x.ToJson(),
            _ => throw new PeftSharpException($"unknown AdapterHub part {p.GetType().Name}"),
        }).ToList();
        return parts.Count == 1 ? parts[0] : new JsonObject { ["architecture"] = "union", ["configs"] = new JsonArray(parts.ToArray<JsonNode?>()) };
    }

    /// <summary>AdapterHub's layout, not peft's.</summary>
    public override JsonObject ToJson() => new()
    {
        ["config"] = ConfigJson(),
        ["hidden_size"] = HiddenSize,
        ["model_class"] = ModelClass,
        ["model_name"] = ModelName ?? BaseModelNameOrPath,
        ["model_type"] = ModelType,
        ["name"] = Name,
        ["version"] = Version,
    };

    protected override void WriteFields(JsonObject o) { }
}
