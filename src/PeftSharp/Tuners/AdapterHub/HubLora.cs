using System.Text.Json.Nodes;
using PeftSharp.Tuners.Bottleneck;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;
using static TorchSharp.torch.nn;

namespace PeftSharp.Tuners.AdapterHub;

/// <summary>AdapterHub's LoRAConfig (not peft's): targets are named by role (attn_matrices, intermediate_lora, output_lora).</summary>
public sealed record HubLoraConfig
{
    public int R { get; init; } = 8;
    public double Alpha { get; init; } = 8;
    public double Dropout { get; init; }
    public IReadOnlyList<string> AttnMatrices { get; init; } = new[] { "q", "v" };
    public bool SelfattnLora { get; init; } = true;
    public bool IntermediateLora { get; init; }
    public bool OutputLora { get; init; }
    public string CompositionMode { get; init; } = "add";
    /// <summary>"lora" (A kaiming-uniform, B zero) or "bert" (both N(0, 0.02)).</summary>
    public string InitWeights { get; init; } = "lora";
    public bool UseGating { get; init; }
    public IReadOnlyList<int> LeaveOut { get; init; } = Array.Empty<int>();

    internal static HubLoraConfig Parse(ConfigReader r)
    {
        var d = new HubLoraConfig();
        r.Accept("architecture", "dtype", "init_weights_seed");
        if (r.Bool("use_dora", false)) throw new PeftConfigException($"{r.Source}: AdapterHub LoRA 'use_dora' true is not supported by PeftSharp");
        foreach (var k in new[] { "vera_b", "vera_d" })
            if (r.Node(k) is not null) throw new PeftConfigException($"{r.Source}: AdapterHub '{k}' (VeRA) is not supported by PeftSharp");
        var c = new HubLoraConfig
        {
            R = r.Int("r", d.R, 1, AdapterSize.MaxRank), Alpha = r.Double("alpha", d.Alpha), Dropout = r.Double("dropout", 0, 0, 0.999999),
            AttnMatrices = r.StringOrList("attn_matrices")?.Items ?? d.AttnMatrices,
            SelfattnLora = r.Bool("selfattn_lora", true), IntermediateLora = r.Bool("intermediate_lora", false), OutputLora = r.Bool("output_lora", false),
            CompositionMode = r.String("composition_mode") ?? "add", InitWeights = r.String("init_weights") ?? "lora",
            UseGating = r.Bool("use_gating", false), LeaveOut = r.IntOrList("leave_out") ?? Array.Empty<int>(),
        };
        if (c.R <= 0) throw new PeftConfigException($"{r.Source}: 'r' must be positive; found {c.R}");
        if (c.CompositionMode != "add") throw new PeftConfigException($"{r.Source}: 'composition_mode' '{c.CompositionMode}' is not supported (PeftSharp supports add)");
        if (c.InitWeights is not ("lora" or "bert")) throw new PeftConfigException($"{r.Source}: 'init_weights' '{c.InitWeights}' is not supported (lora, bert)");
        if (c.AttnMatrices.Any(m => m is not ("q" or "k" or "v"))) throw new PeftConfigException($"{r.Source}: 'attn_matrices' must contain only q, k, v; found [{string.Join(", ", c.AttnMatrices)}]");
        return c;
    }

    public JsonObject ToJson() => new()
    {
        ["alpha"] = Alpha == Math.Floor(Alpha) ? JsonValue.Create((long)Alpha) : JsonValue.Create(Alpha),
        ["architecture"] = "lora",
        ["attn_matrices"] = new JsonArray(AttnMatrices.Select(m => (JsonNode?)m).ToArray()),
        ["composition_mode"] = CompositionMode, ["dropout"] = Dropout, ["dtype"] = null, ["init_weights"] = InitWeights,
        ["init_weights_seed"] = null, ["intermediate_lora"] = IntermediateLora,
        ["leave_out"] = new JsonArray(LeaveOut.Select(i => (JsonNode?)i).ToArray()),
        ["output_lora"] = OutputLora, ["r"] = R, ["selfattn_lora"] = SelfattnLora, ["use_dora"] = false,
        ["use_gating"] = UseGating, ["vera_b"] = null, ["vera_d"] = null,
    };
}

/// <summary>One AdapterHub LoRA: lora_A [r, in], lora_B [out, r], optional gate Linear(in, 1).</summary>
public sealed class HubLoraAdapter : nn.Module
{
    public Parameter lora_A, lora_B;
    Module<Tensor, Tensor>? gate;
    public HubLoraConfig Config { get; }

    public HubLoraAdapter(HubLoraConfig c, long inFeatures, long outFeatures) : base("LoRA")
    {
        Config = c;
        lora_A = Parameter(zeros(c.R, inFeatures));
        lora_B = Parameter(zeros(outFeatures, c.R));
        Linear? g = c.UseGating ? Linear(inFeatures, 1) : null;
        gate = g;
        RegisterComponents();
        using var _ = no_grad();
        if (c.InitWeights == "lora") init.kaiming_uniform_(lora_A, Math.Sqrt(5));
        else { lora_A.normal_(0, 0.02); lora_B.normal_(0, 0.02); }
        if (g is not null) { g.weight!.normal_(0, 0.02); g.bias!.zero_(); }
    }

    public bool Gated => gate is not null;
    public double Scaling => Config.Alpha / Config.R;

    public Tensor Delta(Tensor x)
    {
        var d = matmul(matmul(functional.dropout(x.to(lora_A.dtype), Config.Dropout, training), lora_A.t()), lora_B.t());
        if (gate is null) return d * Scaling;
        // The gate replaces alpha/r: mean over the sequence of sigmoid(gate(x)), one per row.
        return d * functional.sigmoid(gate.call(x)).mean(new long[] { 1 }).unsqueeze(-1);
    }
}

/// <summary>
/// A Linear with AdapterHub LoRAs (<c>loras.&lt;name&gt;</c>) added to its output, on the shared <see cref="AdapterLayer"/>
/// bookkeeping. A merged adapter is skipped by the forward while unmerged active ones still add (AdapterHub's merge_adapter).
/// </summary>
public sealed class HubLoraLinear : AdapterLayer
{
    readonly AdapterModules<HubLoraAdapter> loras = new();

    public HubLoraLinear(Linear original) : base("LoRALinear", original)
    {
        register_module("loras", loras);
    }

    Linear Base => (Linear)base_layer;

    public void Add(string name, HubLoraConfig c, bool trainable)
    {
        CheckNew(name);
        var a = new HubLoraAdapter(c, Base.in_features, Base.out_features);
        a.to(Base.weight!.dtype).to(Base.weight!.device);
        a.train(training);
        loras.Add(name, a);
        Register(name, trainable);
    }

    public override Tensor forward(Tensor x)
    {
        if (RowAdapters is { } rows)
        {
            if (rows.Distinct.Any(loras.Contains)) throw new PeftSharpException("mixed-adapter batches are not supported for AdapterHub LoRA");
            return base_layer.call(x);
        }
        using var scope = NewDisposeScope();
        var y = base_layer.call(x);
        if (!AdaptersDisabled)
            foreach (var n in ActiveAdapters)
                if (!Merged.Contains(n)) y = y + loras[n].Delta(x).to(y.dtype);
        return y.MoveToOuterDisposeScope();
    }

    internal bool IsGated(string adapter) => loras.Contains(adapter) && loras[adapter].Gated;

    Tensor DeltaWeight(HubLoraAdapter a) => matmul(a.lora_B, a.lora_A) * a.Scaling;

    protected override void MergeOne(string adapter)
    {
        var a = loras[adapter];
        if (a.Gated) throw new PeftSharpException($"AdapterHub LoRA '{adapter}' uses gating (its scale depends on the input), so it cannot be merged");
        Base.weight!.add_(DeltaWeight(a).to(Base.weight.dtype));
    }

    protected override void UnmergeOne(string adapter) => Base.weight!.sub_(DeltaWeight(loras[adapter]).to(Base.weight.dtype));

    protected override IEnumerable<Parameter> TrainableTensors(string adapter) => loras[adapter].parameters();

    protected override void RemoveTensors(string adapter) => loras.Remove(adapter);

    public override IEnumerable<(string Key, Tensor Value)> AdapterState(string adapter) =>
        loras.Contains(adapter) ? loras[adapter].named_parameters().Select(p => (p.name, (Tensor)p.parameter)) : Enumerable.Empty<(string, Tensor)>();

    public override bool LoadAdapterState(string adapter, string key, Tensor value) => loras.Contains(adapter) && HubTensors.CopyInto(loras[adapter], key, value);
}
