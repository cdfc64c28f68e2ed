using System.Text.Json.Nodes;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;
using static TorchSharp.torch.nn;

namespace PeftSharp.Tuners.Bottleneck;

/// <summary>A parameterless module around an activation function (a child of adapter_down, as in AdapterHub).</summary>
internal sealed class ActivationModule : Module<Tensor, Tensor>
{
    readonly Func<Tensor, Tensor> _f;
    public ActivationModule(Func<Tensor, Tensor> f) : base("Activation_Function_Class") => _f = f;
    public override Tensor forward(Tensor x) => _f(x);
}

/// <summary>
/// One bottleneck adapter (AdapterHub's Adapter / ParallelAdapter): <c>A(z) = up(act(down(z))) * scaling</c>, with
/// AdapterHub's pre/post residual and LayerNorm rules. Parameter names follow AdapterHub
/// (adapter_down.0, adapter_up, scaling, gate, adapter_norm_before/after).
/// </summary>
public sealed class BottleneckAdapter : nn.Module
{
    Sequential adapter_down;
    Module<Tensor, Tensor> adapter_up;
    Module<Tensor, Tensor>? adapter_norm_after;
    Module<Tensor, Tensor>? gate;
    Parameter? scaling;
    readonly double _scaling;

    public BottleneckConfig Config { get; }

    /// <summary>The bottleneck width: hidden / reduction_factor, at least 1.</summary>
    public static long DownSize(BottleneckConfig c, long hidden) => Math.Max(1, (long)Math.Floor(hidden / c.ReductionFactor));

    /// <summary>Elements of one adapter: down and up projections with biases, plus layer norms, scaling and gate at most.</summary>
    public static long Elements(BottleneckConfig c, long hidden) =>
        AdapterSize.Add(AdapterSize.Mul(DownSize(c, hidden), 2 * hidden + 1), 6 * hidden + 1);

    public BottleneckAdapter(BottleneckConfig c, long hidden) : base("Adapter")
    {
        Config = c;
        long down = DownSize(c, hidden);
        var seq = new List<(string, Module<Tensor, Tensor>)>();
        if (c.LnBefore) seq.Add(("0", LayerNorm(hidden)));
        var downLinear = Linear(hidden, down);
        seq.Add((seq.Count.ToString(), downLinear));
        seq.Add((seq.Count.ToString(), new ActivationModule(Activation(c.NonLinearity, "non_linearity"))));
        adapter_down = Sequential(seq.ToArray());
        var upLinear = Linear(down, hidden);
        adapter_up = upLinear;
        if (c.Scaling is JsonValue v && v.TryGetValue<string>(out var s))
            scaling = Parameter(s == "learned" ? ones(1) : ones(hidden));
        else _scaling = double.Parse(c.Scaling.ToJsonString(), System.Globalization.CultureInfo.InvariantCulture);
        if (c.LnAfter) adapter_norm_after = LayerNorm(hidden);
        Linear? gateLinear = c.UseGating ? Linear(hidden, 1) : null;
        gate = gateLinear;
        RegisterComponents();
        Init(c.InitWeights, downLinear, upLinear, gateLinear);
    }

    static void Init(string how, Linear down, Linear up, Linear? gate)
    {
        using var _ = no_grad();
        void Bert(Linear l) { l.weight!.normal_(0, 0.02); l.bias!.zero_(); }
        switch (how)
        {
            case "bert":
                Bert(down); Bert(up);
                break;
            case "mam_adapter":
                init.kaiming_uniform_(down.weight!, Math.Sqrt(5));
                down.bias!.zero_();
                up.weight!.zero_(); up.bias!.zero_();
                break;
            case "houlsby":
                init.trunc_normal_(down.weight!, 0, 1e-2, -2e-2, 2e-2); down.bias!.zero_();
                init.trunc_normal_(up.weight!, 0, 1e-2, -2e-2, 2e-2); up.bias!.zero_();
                break;
        }
        if (gate is not null) Bert(gate);
    }

    /// <summary>AdapterHub's activation names (transformers' ACT2FN plus leakyrelu).</summary>
    public static Func<Tensor, Tensor> Activation(string name, string field) => name.ToLowerInvariant() switch
    {
        "leakyrelu" => x => functional.leaky_relu(x),
        var n => Models.Activations.Get(n, field),
    };

    /// <summary>(hidden, query, residual) before the adapter runs: AdapterHub's pre_forward.</summary>
    public (Tensor Hidden, Tensor? Query, Tensor Residual) PreForward(Tensor hidden, Tensor input, Module<Tensor, Tensor>? ln, FusionConfig? fusion = null)
    {
        if (Config.IsParallel) return (input, fusion is null ? null : input, input);
        var mode = Config.ResidualMode;
        Tensor? residual = mode == "true" ? hidden : null;
        Tensor? query = fusion is { QueryBeforeLn: true } ? hidden : null;
        if (Config.OriginalLnBefore)
        {
            hidden = hidden + input;
            if (mode == "post_add") residual = hidden;
            if (ln is not null) hidden = ln.call(hidden);
        }
        if (mode == "false") residual = hidden;
        if (fusion is { QueryBeforeLn: false }) query = hidden;
        return (hidden, query, residual!);
    }

    /// <summary>(output, up): the adapter's output with its residual, and <c>A(z)</c> alone (what fusion reads).</summary>
    public (Tensor Output, Tensor Up) Forward(Tensor x, Tensor residual)
    {
        var up = adapter_up.call(adapter_down.call(x));
        up = scaling is null ? up * _scaling : up * scaling;
        var output = functional.dropout(up, Config.Dropout, training);
        if (gate is not null)
        {
            var g = functional.sigmoid(gate.call(x)).mean(new long[] { 1 }).unsqueeze(-1);
            output = output * g;
        }
        if (Config.IsParallel)
        {
            if (adapter_norm_after is not null) output = adapter_norm_after.call(output);
            return (output, up);
        }
        if (Config.AdapterResidualBeforeLn) output = output + residual;
        if (adapter_norm_after is not null) output = adapter_norm_after.call(output);
        if (!Config.AdapterResidualBeforeLn) output = output + residual;
        return (output, up);
    }

    /// <summary>AdapterHub's post_forward: the sublayer residual and LayerNorm after the adapter block(s).</summary>
    public Tensor PostForward(Tensor hidden, Tensor inputHidden, Tensor input, Module<Tensor, Tensor>? ln)
    {
        if (Config.IsParallel) hidden = hidden + inputHidden;
        if (!Config.OriginalLnAfter) return hidden;
        return ln is null ? hidden + input : ln.call(hidden + input);
    }
}
