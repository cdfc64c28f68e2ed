using System.Text.Json.Nodes;

namespace PeftSharp.Tuners.Bottleneck;

/// <summary>
/// AdapterHub's BnConfig (bottleneck adapters) with its field names and defaults. Presets: <see cref="SeqBn"/>
/// (Pfeiffer), <see cref="DoubleSeqBn"/> (Houlsby), <see cref="ParBn"/> (parallel, He et al.), <see cref="ScaledParBn"/>.
/// </summary>
public sealed record BottleneckConfig
{
    public bool MhAdapter { get; init; }
    public bool OutputAdapter { get; init; } = true;
    public double ReductionFactor { get; init; } = 16;
    public string NonLinearity { get; init; } = "relu";
    public bool OriginalLnBefore { get; init; }
    public bool OriginalLnAfter { get; init; } = true;
    public bool LnBefore { get; init; }
    public bool LnAfter { get; init; }
    /// <summary>bool or "post_add" (AdapterHub's residual_before_ln).</summary>
    public JsonNode ResidualBeforeLn { get; init; } = JsonValue.Create(true);
    public bool AdapterResidualBeforeLn { get; init; }
    public bool IsParallel { get; init; }
    /// <summary>A number, "learned" (one scalar parameter) or "channel" (one per hidden unit).</summary>
    public JsonNode Scaling { get; init; } = JsonValue.Create(1.0);
    public bool UseGating { get; init; }
    /// <summary>"bert", "mam_adapter" or "houlsby".</summary>
    public string InitWeights { get; init; } = "bert";
    public double Dropout { get; init; }
    /// <summary>AdapterDrop (static): layers that get no adapter.</summary>
    public IReadOnlyList<int> LeaveOut { get; init; } = Array.Empty<int>();

    public static BottleneckConfig SeqBn() => new() { OriginalLnBefore = true };
    public static BottleneckConfig DoubleSeqBn() => new() { MhAdapter = true, NonLinearity = "swish" };
    public static BottleneckConfig ParBn() => new() { IsParallel = true, ReductionFactor = 2, Scaling = JsonValue.Create(4.0), InitWeights = "mam_adapter" };
    public static BottleneckConfig ScaledParBn() => ParBn() with { Scaling = JsonValue.Create("learned") };

    /// <summary>A preset by AdapterHub's config string (seq_bn, pfeiffer, double_seq_bn, houlsby, par_bn, scaled_par_bn).</summary>
    public static BottleneckConfig? Preset(string name) => name switch
    {
        "seq_bn" or "pfeiffer" => SeqBn(),
        "double_seq_bn" or "houlsby" => DoubleSeqBn(),
        "par_bn" or "parallel" => ParBn(),
        "scaled_par_bn" => ScaledParBn(),
        _ => null,
    };

    /// <summary>"post_add", or the bool value.</summary>
    public string ResidualMode => ResidualBeforeLn is JsonValue v && v.TryGetValue<bool>(out var b) ? (b ? "true" : "false") : "post_add";

    internal static BottleneckConfig Parse(ConfigReader r)
    {
        var d = new BottleneckConfig();
        r.Accept("architecture");
        foreach (var (key, ok) in new (string, Func<JsonNode?, bool>)[]
        {
            ("phm_layer", n => n is null || n.GetValue<bool>() == false),
            ("inv_adapter", n => n is null),
            ("cross_adapter", n => n is null || n.GetValue<bool>() == false),
            ("stochastic_depth", n => n is null || n.GetValue<double>() == 0),
        })
        {
            var n = r.Node(key);
            if (!ok(n)) throw new PeftConfigException($"{r.Source}: AdapterHub '{key}' = {n?.ToJsonString()} is not supported by PeftSharp (only the default)");
        }
        r.Accept("factorized_phm_W", "factorized_phm_rule", "hypercomplex_nonlinearity", "learn_phm", "phm_bias", "phm_c_init", "phm_dim",
            "phm_init_range", "phm_rank", "shared_W_phm", "shared_phm_rule", "inv_adapter_reduction_factor", "init_weights_seed");
        var rf = r.Node("reduction_factor");
        double reduction = rf switch
        {
            null => d.ReductionFactor,
            JsonValue v when v.GetValueKind() == System.Text.Json.JsonValueKind.Number && v.TryGetValue<double>(out var value) => value,
            _ => throw new PeftConfigException($"{r.Source}: 'reduction_factor' must be a number (per-layer mappings are not supported); found {rf.ToJsonString()}"),
        };
        var scaling = r.Node("scaling") ?? d.Scaling;
        if (!(scaling is JsonValue sv && (sv.GetValueKind() == System.Text.Json.JsonValueKind.Number && sv.TryGetValue<double>(out var sd) && double.IsFinite(sd)
                || sv.TryGetValue<string>(out var ss) && ss is "learned" or "channel")))
            throw new PeftConfigException($"{r.Source}: 'scaling' must be a finite number, \"learned\" or \"channel\"; found {scaling.ToJsonString()}");
        var residual = r.Node("residual_before_ln") ?? d.ResidualBeforeLn;
        if (!(residual is JsonValue rv && (rv.TryGetValue<bool>(out _) || rv.TryGetValue<string>(out var rs) && rs == "post_add")))
            throw new PeftConfigException($"{r.Source}: 'residual_before_ln' must be true, false or \"post_add\"; found {residual.ToJsonString()}");
        var c = new BottleneckConfig
        {
            MhAdapter = r.Bool("mh_adapter", false),
            OutputAdapter = r.Bool("output_adapter", false),
            ReductionFactor = reduction,
            NonLinearity = r.String("non_linearity") ?? d.NonLinearity,
            OriginalLnBefore = r.Bool("original_ln_before", d.OriginalLnBefore),
            OriginalLnAfter = r.Bool("original_ln_after", d.OriginalLnAfter),
            LnBefore = r.Bool("ln_before", false),
            LnAfter = r.Bool("ln_after", false),
            ResidualBeforeLn = residual,
            AdapterResidualBeforeLn = r.Bool("adapter_residual_before_ln", false),
            IsParallel = r.Bool("is_parallel", false),
            Scaling = scaling,
            UseGating = r.Bool("use_gating", false),
            InitWeights = r.String("init_weights") ?? d.InitWeights,
            Dropout = r.Double("dropout", 0),
            LeaveOut = r.IntOrList("leave_out") ?? Array.Empty<int>(),
        };
        c.Validate(r.Source);
        return c;
    }

    public void Validate(string source)
    {
        // Below 1/64 the bottleneck would be 64× wider than the model: a typo, not a design.
        if (!(ReductionFactor >= 1.0 / 64 && ReductionFactor <= AdapterSize.MaxWidth))
            throw new PeftConfigException($"{source}: 'reduction_factor' must be a number in [{1.0 / 64}, {AdapterSize.MaxWidth}]; found {ReductionFactor}");
        if (Dropout is < 0 or >= 1) throw new PeftConfigException($"{source}: 'dropout' must be in [0, 1); found {Dropout}");
        if (LeaveOut.Where(l => l is < 0 or >= AdapterSize.MaxLayers).Select(l => (int?)l).FirstOrDefault() is int bad)
            throw new PeftConfigException($"{source}: 'leave_out' entries must be layer indices in 0..{AdapterSize.MaxLayers - 1}; found {bad}");
        if (InitWeights is not ("bert" or "mam_adapter" or "houlsby"))
            throw new PeftConfigException($"{source}: 'init_weights' must be bert, mam_adapter or houlsby; found '{InitWeights}'");
        if (!MhAdapter && !OutputAdapter) throw new PeftConfigException($"{source}: neither 'mh_adapter' nor 'output_adapter' is set, so the adapter would sit nowhere");
        BottleneckAdapter.Activation(NonLinearity, $"{source}: non_linearity");
    }

    /// <summary>The full key set AdapterHub 1.2 writes for a BnConfig.</summary>
    public JsonObject ToJson() => new()
    {
        ["adapter_residual_before_ln"] = AdapterResidualBeforeLn,
        ["cross_adapter"] = false,
        ["dropout"] = Dropout,
        ["factorized_phm_W"] = true,
        ["factorized_phm_rule"] = false,
        ["hypercomplex_nonlinearity"] = "glorot-uniform",
        ["init_weights"] = InitWeights,
        ["init_weights_seed"] = null,
        ["inv_adapter"] = null,
        ["inv_adapter_reduction_factor"] = null,
        ["is_parallel"] = IsParallel,
        ["learn_phm"] = true,
        ["leave_out"] = new JsonArray(LeaveOut.Select(i => (JsonNode?)i).ToArray()),
        ["ln_after"] = LnAfter,
        ["ln_before"] = LnBefore,
        ["mh_adapter"] = MhAdapter,
        ["non_linearity"] = NonLinearity,
        ["original_ln_after"] = OriginalLnAfter,
        ["original_ln_before"] = OriginalLnBefore,
        ["output_adapter"] = OutputAdapter,
        ["phm_bias"] = true,
        ["phm_c_init"] = "normal",
        ["phm_dim"] = 4,
        ["phm_init_range"] = 0.0001,
        ["phm_layer"] = false,
        ["phm_rank"] = 1,
        ["reduction_factor"] = ReductionFactor == Math.Floor(ReductionFactor) ? JsonValue.Create((long)ReductionFactor) : JsonValue.Create(ReductionFactor),
        ["residual_before_ln"] = ResidualBeforeLn.DeepClone(),
        ["scaling"] = Scaling.DeepClone(),
        ["shared_W_phm"] = false,
        ["shared_phm_rule"] = true,
        ["stochastic_depth"] = 0.0,
        ["use_gating"] = UseGating,
    };
}
