using System.Text.Json.Nodes;
using PeftSharp.Models;
using PeftSharp.Tuners.Bottleneck;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;
using static TorchSharp.torch.nn;

namespace PeftSharp.Tuners.AdapterHub;

/// <summary>AdapterHub's PrefixTuningConfig (its own reparameterized prefix, not peft's).</summary>
public sealed record HubPrefixConfig
{
    public int PrefixLength { get; init; } = 30;
    public int BottleneckSize { get; init; } = 512;
    public string NonLinearity { get; init; } = "tanh";
    public double Dropout { get; init; }
    public bool UseGating { get; init; }
    public bool SharedGating { get; init; } = true;
    public bool EncoderPrefix { get; init; } = true;
    public bool CrossPrefix { get; init; } = true;
    public IReadOnlyList<int> LeaveOut { get; init; } = Array.Empty<int>();

    internal static HubPrefixConfig Parse(ConfigReader r)
    {
        r.Accept("architecture", "init_weights_seed");
        if (r.Bool("flat", false)) throw new PeftConfigException($"{r.Source}: AdapterHub prefix tuning 'flat' true is not supported by PeftSharp");
        var c = new HubPrefixConfig
        {
            PrefixLength = r.Int("prefix_length", 30, 1, AdapterSize.MaxTokens), BottleneckSize = r.Int("bottleneck_size", 512, 1, AdapterSize.MaxWidth),
            NonLinearity = r.String("non_linearity") ?? "tanh", Dropout = r.Double("dropout", 0, 0, 0.999999),
            UseGating = r.Bool("use_gating", false), SharedGating = r.Bool("shared_gating", true),
            EncoderPrefix = r.Bool("encoder_prefix", true), CrossPrefix = r.Bool("cross_prefix", true),
            LeaveOut = r.IntOrList("leave_out") ?? Array.Empty<int>(),
        };
        if (c.PrefixLength <= 0 || c.BottleneckSize <= 0) throw new PeftConfigException($"{r.Source}: 'prefix_length' and 'bottleneck_size' must be positive");
        if (c.LeaveOut.Count > 0) throw new PeftConfigException($"{r.Source}: AdapterHub prefix tuning with 'leave_out' is not supported by PeftSharp (every layer needs the same prefix length)");
        if (c.UseGating && !c.SharedGating) throw new PeftConfigException($"{r.Source}: prefix gating with 'shared_gating' false is not supported by PeftSharp");
        BottleneckAdapter.Activation(c.NonLinearity, $"{r.Source}: non_linearity");
        return c;
    }

    public JsonObject ToJson() => new()
    {
        ["architecture"] = "prefix_tuning", ["bottleneck_size"] = BottleneckSize, ["cross_prefix"] = CrossPrefix, ["dropout"] = Dropout,
        ["encoder_prefix"] = EncoderPrefix, ["flat"] = false, ["init_weights_seed"] = null,
        ["leave_out"] = new JsonArray(LeaveOut.Select(i => (JsonNode?)i).ToArray()), ["non_linearity"] = NonLinearity,
        ["prefix_length"] = PrefixLength, ["shared_gating"] = SharedGating, ["use_gating"] = UseGating,
    };
}

/// <summary>AdapterHub's PrefixTuning: <c>control_trans(wte.weight)</c> = Linear → act → Linear, viewed per layer as keys and values.</summary>
public sealed class HubPrefixGenerator : nn.Module
{
    Module<Tensor, Tensor> wte;
    Sequential control_trans;
    readonly HubPrefixConfig _c;
    readonly int _layers, _heads, _headDim;

    public HubPrefixGenerator(HubPrefixConfig c, long hidden, int layers, int heads, int headDim) : base("PrefixTuning")
    {
        _c = c; _layers = layers; _heads = heads; _headDim = headDim;
        wte = Embedding(c.PrefixLength, hidden);
        control_trans = Sequential(("0", Linear(hidden, c.BottleneckSize)), ("1", new ActivationModule(BottleneckAdapter.Activation(c.NonLinearity, "non_linearity"))),
            ("2", Linear(c.BottleneckSize, (long)layers * 2 * heads * headDim)));
        RegisterComponents();
    }

    public int PrefixLength => _c.PrefixLength;

    /// <summary>Per layer (keys, values), each [batch, heads, prefix_length, head_dim].</summary>
    public (Tensor Key, Tensor Value)[] Compute(long batch)
    {
        var w = TiedLMHead.EmbeddingWeight(wte);
        var kv = control_trans.call(w).unsqueeze(0).expand(batch, -1, -1)
            .view(batch, _c.PrefixLength, _layers * 2, _heads, _headDim);
        kv = functional.dropout(kv, _c.Dropout, training).permute(2, 0, 3, 1, 4);
        return Enumerable.Range(0, _layers).Select(i => (kv[2 * i], kv[2 * i + 1])).ToArray();
    }
}

/// <summary>
/// AdapterHub prefix tuning at one attention block. It wraps the module that reads the attention input (k_proj /
/// key / c_attn) only to see that input: a gated prefix (UniPELT) is scaled by
/// <c>mean_seq(sigmoid(gate(input)))</c> and re-seeded into the KV cache before the block's keys are appended.
/// The prefix generators (shared by all layers) are owned by the first layer's probe.
/// </summary>
public sealed class HubPrefixProbe : Module<Tensor, Tensor>, IAdapterLayer
{
    readonly Module<Tensor, Tensor> base_layer;
    readonly AdapterModules<Module<Tensor, Tensor>> prefix_gates = new();
    readonly AdapterModules<HubPrefixGenerator>? pool;
    readonly Func<AdapterModules<HubPrefixGenerator>> _pool;
    List<string> _active = new();

    public int Layer { get; }

    public HubPrefixProbe(Module<Tensor, Tensor> original, int layer, HubPrefixProbe? owner) : base("PrefixTuningLayer")
    {
        base_layer = original;
        Layer = layer;
        if (owner is null) { pool = new AdapterModules<HubPrefixGenerator>(); var p = pool; _pool = () => p; }
        else _pool = () => owner.Pool;
        RegisterComponents();
    }

    public bool OwnsPool => pool is not null;
    public AdapterModules<HubPrefixGenerator> Pool => _pool();

    /// <summary>The prefix of the running forward (set by <see cref="AdapterHubMethod"/> around the model call), or null.</summary>
    internal HubPrefixRun? Run { get; set; }

    public void AddGate(string adapter, long hidden)
    {
        var g = Linear(hidden, 1);
        using (no_grad()) { g.weight!.normal_(0, 0.02); g.bias!.zero_(); }
        var w = base_layer.parameters().First();
        g.to(w.dtype).to(w.device);
        prefix_gates.Add(adapter, g);
    }

    public override Tensor forward(Tensor x)
    {
        if (Run is { } run && !AdaptersDisabled) run.OnAttentionInput(this, x);
        else if (Run is null && !AdaptersDisabled && (RowAdapters?.Distinct ?? _active).Any(Pool.Contains))
            throw new PeftSharpException("AdapterHub prefix tuning is active: run the forward through PeftModel.Forward (a direct model forward would silently drop the prefix)");
        return base_layer.call(x);
    }

    internal bool HasGate(string adapter) => prefix_gates.Contains(adapter);

    internal Tensor? Gate(string adapter, Tensor x) =>
        prefix_gates.Contains(adapter) ? functional.sigmoid(prefix_gates[adapter].call(x)).mean(new long[] { 1 }).view(-1, 1, 1, 1) : null;

    // ---- IAdapterLayer ----
    public nn.Module BaseLayer => base_layer;
    public IReadOnlyList<string> Adapters => Pool.Keys.ToList();
    public IReadOnlyList<string> ActiveAdapters => _active;
    public void SetActiveAdapters(IReadOnlyList<string> names) => _active = names.ToList();
    public bool AdaptersDisabled { get; set; }
    public RowAdapters? RowAdapters => ForwardContext.Current?.Rows;
    public IReadOnlyList<string> MergedAdapters => Array.Empty<string>();

    public void Merge(IEnumerable<string> names)
    {
        var held = names.Where(Adapters.Contains).ToList();
        if (held.Count > 0) throw new PeftSharpException($"AdapterHub prefix tuning ({string.Join(", ", held)}) cannot be merged into the base weights");
    }

    public void Unmerge() { }

    public void DeleteAdapter(string name)
    {
        prefix_gates.Remove(name);
        pool?.Remove(name);
        _active.Remove(name);
    }

    public void SetTrainable(string name, bool trainable)
    {
        if (prefix_gates.Contains(name)) foreach (var p in prefix_gates[name].parameters()) p.requires_grad = trainable;
        if (pool is not null && pool.Contains(name)) foreach (var p in pool[name].parameters()) p.requires_grad = trainable;
    }

    /// <summary>Gate tensors as "gate.&lt;param&gt;", and (first layer only) the generator as "pool.&lt;param&gt;".</summary>
    public IEnumerable<(string Key, Tensor Value)> AdapterState(string adapter)
    {
        if (prefix_gates.Contains(adapter))
            foreach (var (n, p) in prefix_gates[adapter].named_parameters()) yield return ("gate." + n, p);
        if (pool is not null && pool.Contains(adapter))
            foreach (var (n, p) in pool[adapter].named_parameters()) yield return ("pool." + n, p);
    }

    public bool LoadAdapterState(string adapter, string key, Tensor value)
    {
        if (key.StartsWith("gate.", StringComparison.Ordinal)) return prefix_gates.Contains(adapter) && HubTensors.CopyInto(prefix_gates[adapter], key[5..], value);
        if (key.StartsWith("pool.", StringComparison.Ordinal)) return pool is not null && pool.Contains(adapter) && HubTensors.CopyInto(pool[adapter], key[5..], value);
        return false;
    }

    public nn.Module Unwrapped => base_layer;
}

/// <summary>
/// One forward with AdapterHub prefixes: <see cref="Seed"/> computes them (once, into an empty cache) and gated
/// prefixes are re-seeded per layer with their gate. Decode steps of a cached generation find the prefix in the cache.
/// </summary>
internal sealed class HubPrefixRun
{
    readonly List<(string Adapter, HubPrefixGenerator Generator)> _active;
    readonly long _batch;
    KVCache? _cache;
    List<(string Adapter, (Tensor Key, Tensor Value)[] Kv)>? _prefixes;

    public HubPrefixRun(List<(string, HubPrefixGenerator)> active, long batch)
    {
        _active = active; _batch = batch;
    }

    public long Length => _active.Sum(p => (long)p.Generator.PrefixLength);

    public void Seed(KVCache cache)
    {
        _cache = cache;
        _prefixes = _active.Select(a => (a.Adapter, a.Generator.Compute(_batch))).ToList();
        for (int i = 0; i < cache.NumLayers; i++) Seed(i, null, null);
    }

    void Seed(int layer, HubPrefixProbe? probe, Tensor? x)
    {
        var keys = new List<Tensor>();
        var values = new List<Tensor>();
        foreach (var (adapter, kv) in _prefixes!)
        {
            var (k, v) = kv[layer];
            if (probe is not null && x is not null && probe.Gate(adapter, x) is { } g) { k = k * g; v = v * g; }
            keys.Add(k); values.Add(v);
        }
        _cache!.SetPrefix(layer, keys.Count == 1 ? keys[0] : cat(keys, 2), values.Count == 1 ? values[0] : cat(values, 2));
    }

    public void OnAttentionInput(HubPrefixProbe probe, Tensor x)
    {
        // A gate reads this forward's attention input, so it only exists in a forward that seeded the prefix.
        if (_prefixes is not null && _prefixes.Any(p => probe.HasGate(p.Adapter))) Seed(probe.Layer, probe, x);
    }
}
