using System.Text.Json;
using System.Text.Json.Nodes;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;
using static TorchSharp.torch.nn;

namespace PeftSharp.Tuners.Bottleneck;

/// <summary>AdapterHub's AdapterFusionConfig (adapter_fusion_config.json → config); <see cref="Dynamic"/> is its default.</summary>
public sealed record FusionConfig
{
    public bool Key { get; init; } = true;
    public bool Query { get; init; } = true;
    public bool Value { get; init; } = true;
    public bool QueryBeforeLn { get; init; }
    public bool Regularization { get; init; } = true;
    public bool ResidualBefore { get; init; }
    public bool Temperature { get; init; }
    public bool ValueBeforeSoftmax { get; init; } = true;
    public bool ValueInitialized { get; init; } = true;
    public double? DropoutProb { get; init; }

    public static FusionConfig Dynamic() => new();
    public static FusionConfig Static() => new() { Key = false, Query = false, Value = false, Regularization = false, ValueInitialized = false };

    internal static FusionConfig Parse(ConfigReader r)
    {
        var d = new FusionConfig();
        var n = r.Node("dropout_prob");
        return new FusionConfig
        {
            Key = r.Bool("key", d.Key), Query = r.Bool("query", d.Query), Value = r.Bool("value", d.Value),
            QueryBeforeLn = r.Bool("query_before_ln", d.QueryBeforeLn), Regularization = r.Bool("regularization", d.Regularization),
            ResidualBefore = r.Bool("residual_before", d.ResidualBefore), Temperature = r.Bool("temperature", d.Temperature),
            ValueBeforeSoftmax = r.Bool("value_before_softmax", d.ValueBeforeSoftmax), ValueInitialized = r.Bool("value_initialized", d.ValueInitialized),
            DropoutProb = n is JsonValue v && v.GetValueKind() == JsonValueKind.Number ? v.GetValue<double>() : null,
        };
    }

    public JsonObject ToJson() => new()
    {
        ["dropout_prob"] = DropoutProb, ["key"] = Key, ["query"] = Query, ["query_before_ln"] = QueryBeforeLn,
        ["regularization"] = Regularization, ["residual_before"] = ResidualBefore, ["temperature"] = Temperature,
        ["value"] = Value, ["value_before_softmax"] = ValueBeforeSoftmax, ["value_initialized"] = ValueInitialized,
    };
}

/// <summary>
/// AdapterHub's BertFusion: per token, attention of the sublayer state (query) over the adapters' outputs (keys,
/// values): <c>softmax_i((W_q z)·(W_k u_i) / T)</c>, then <c>Σ p_i W_v u_i</c> plus the residual.
/// </summary>
public sealed class FusionLayer : nn.Module
{
    Module<Tensor, Tensor>? query, key, value, dense;
    readonly double _dropout;
    double _t;

    public FusionConfig Config { get; }

    public FusionLayer(FusionConfig c, long hidden, double dropout) : base("BertFusion")
    {
        Config = c;
        _dropout = c.DropoutProb ?? dropout;
        Linear? q = null, k = null, v = null;
        if (!c.Query && !c.Key && !c.Value) dense = Linear(hidden, 1);
        if (c.Query) query = q = Linear(hidden, hidden);
        if (c.Key) key = k = Linear(hidden, hidden);
        if (c.Value) value = v = Linear(hidden, hidden, hasBias: false);
        RegisterComponents();
        using var _ = no_grad();
        foreach (var l in new[] { q, k, v }) { if (l is null) continue; l.weight!.normal_(0, 0.02); l.bias?.zero_(); }
        if (v is not null && c.ValueInitialized) v.weight!.copy_(eye(hidden) * (1 - 1e-6) + 1e-6);
        _t = c.Temperature ? 50.0 : 1.0;
    }

    /// <param name="q">[batch, seq, hidden]</param>
    /// <param name="ups">The adapters' outputs, [batch, seq, n_adapters, hidden].</param>
    public Tensor Forward(Tensor q, Tensor ups, Tensor residual)
    {
        var values = Config.ResidualBefore ? ups + residual.unsqueeze(2) : ups;
        var ql = query is null ? q : query.call(q);
        var kl = key is null ? ups : key.call(ups);
        var vl = value is not null && Config.ValueBeforeSoftmax ? value.call(values) : values;
        var scores = matmul(ql.unsqueeze(2), kl.transpose(-2, -1)).squeeze(2);
        scores = functional.dropout(scores, _dropout, training);
        var probs = functional.softmax(scores / _t, -1);
        // AdapterHub anneals the temperature by T/1000 on every forward call (train or eval) down to 1.
        if (_t > 1.0) _t = Math.Max(_t - (Config.Temperature ? 50.0 : 1.0) / 1000.0, 1.0);
        var context = matmul(probs.unsqueeze(2), vl).squeeze(2);
        if (value is not null && !Config.ValueBeforeSoftmax) context = value.call(context);
        if (!Config.ResidualBefore) context = context + residual;
        return context;
    }

    /// <summary>AdapterHub's fusion regularization term: 0.01 · ‖I − W_v‖² (added to the loss while training fusion).</summary>
    public Tensor? RegularizationLoss()
    {
        if (value is not Linear v || !Config.Regularization) return null;
        var w = v.weight!;
        return (eye(w.shape[0], dtype: w.dtype, device: w.device) - w).pow(2).sum() * 0.01;
    }
}
