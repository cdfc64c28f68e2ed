using PeftSharp.Models;
using TorchSharp;
using static TorchSharp.torch;
using static TorchSharp.torch.nn;

namespace PeftSharp.Tuners.Bottleneck;

/// <summary>
/// A filled <see cref="BlockSlot"/> (AdapterHub's BottleneckLayer): bottleneck adapters by name (<c>adapters</c>) and
/// fusion layers by "a,b" name (<c>adapter_fusion_layer</c>), run through the active <see cref="Composition"/>.
/// With no active adapter here it computes the base slot.
/// </summary>
public sealed class AdapterSlot : BlockSlot, IAdapterLayer
{
    readonly AdapterModules<BottleneckAdapter> adapters = new();
    readonly AdapterModules<FusionLayer> adapter_fusion_layer = new();
    Composition? _setup;
    readonly HashSet<string> _dropped = new();

    public AdapterSlot(BlockSlot at) : base(at.Location, at.Layer, at.KeysInParent, "BottleneckLayer")
    {
        RegisterComponents();
    }

    public BottleneckAdapter this[string adapter] => adapters[adapter];
    public IEnumerable<string> FusionNames => adapter_fusion_layer.Keys;
    public FusionLayer Fusion(string name) => adapter_fusion_layer[name];

    public void Add(string name, BottleneckAdapter adapter) => adapters.Add(name, adapter);

    public void AddFusion(string name, FusionLayer layer) => adapter_fusion_layer.Add(name, layer);

    public void DeleteFusion(string name) => adapter_fusion_layer.Remove(name);

    /// <summary>The composition this slot runs (set for the whole model by <see cref="AdapterHub.HubAdapters.Activate"/>).</summary>
    public Composition? Setup { get => _setup; set => _setup = value; }

    /// <summary>The batch size a Parallel composition replicates (at the first slot with adapters), set around the forward by <see cref="AdapterHub.AdapterHubMethod"/>.</summary>
    internal long? ReplicatedBatch { get; set; }

    /// <summary>AdapterDrop while training: adapters skipped in this slot for the next forwards.</summary>
    public void SetDropped(IEnumerable<string> names)
    {
        _dropped.Clear();
        foreach (var n in names) _dropped.Add(n);
    }

    // AdapterHub's get_active_setup: the part of the setup this layer holds; null when it holds none of it.
    Composition? Effective(Composition c)
    {
        if (c.Type == Composition.Kind.Single) return Holds(c.Name!) ? c : null;
        var kids = c.Children.Select(Effective).ToArray();
        var held = kids.Where(k => k is not null).Select(k => k!).ToArray();
        if (held.Length == 0) return null;
        return c.Type switch
        {
            Composition.Kind.Fuse => held.Length == kids.Length ? c : null,
            Composition.Kind.Stack => Composition.Stack(held),
            // A copy whose adapter is not here passes through unchanged.
            Composition.Kind.Parallel => c,
            _ => Composition.Average(held, kids.Select((k, i) => (k, i)).Where(x => x.k is not null).Select(x => c.Weights[x.i]).ToList(), normalizeWeights: false),
        };
    }

    bool Holds(string adapter) => adapters.Contains(adapter) && !_dropped.Contains(adapter);

    public override Tensor Apply(Tensor h, Tensor x, Module<Tensor, Tensor>? layerNorm)
    {
        // In a mixed-adapter batch of other methods' adapters this slot computes nothing of its own.
        if (RowAdapters is { } rows)
        {
            if (rows.Distinct.Any(adapters.Contains)) throw new PeftSharpException("mixed-adapter batches are not supported for bottleneck adapters");
            return base.Apply(h, x, layerNorm);
        }
        var setup = AdaptersDisabled || _setup is null ? null : Effective(_setup);
        if (setup is null) return base.Apply(h, x, layerNorm);
        using var scope = NewDisposeScope();
        // AdapterHub's Parallel replicates the batch at the first adapter layer it reaches; the layers below ran once.
        if (ReplicatedBatch is long batch && setup.ParallelChannels is var copies and > 1 && h.shape[0] == batch)
        {
            h = Attention.TileRows(h, batch * copies);
            x = Attention.TileRows(x, batch * copies);
        }
        var state = new State(h, x, x, null, null);
        // A single adapter runs as Stack(name), as AdapterHub parses it.
        state = setup.Type == Composition.Kind.Single ? Stack(Composition.Stack(setup), state, layerNorm) : Compose(setup, state, layerNorm);
        var y = adapters[state.Last!].PostForward(state.Hidden, h, state.Input, layerNorm);
        return y.MoveToOuterDisposeScope();
    }

    record State(Tensor Hidden, Tensor Input, Tensor Residual, Tensor? Up, string? Last);

    State Compose(Composition c, State s, Module<Tensor, Tensor>? ln) => c.Type switch
    {
        Composition.Kind.Stack => Stack(c, s, ln),
        Composition.Kind.Fuse => Fuse(c, s, ln),
        Composition.Kind.Parallel => Parallel(c, s, ln),
        Composition.Kind.Average => Average(c, s, ln),
        _ => Single(c.Name!, PreBlock(c.Name!, s, ln)),
    };

    // A child of Parallel/Average gets the block's pre-processed state: a name runs on it directly, a Stack pre-processes again.
    State Child(Composition child, State s, Module<Tensor, Tensor>? ln) =>
        child.Type == Composition.Kind.Single ? Single(child.Name!, s) : Compose(child, s, ln);

    static State Rows(State s, long start, long count) => s with
    {
        Hidden = s.Hidden.narrow(0, start, count), Input = s.Input.narrow(0, start, count),
        Residual = s.Residual.narrow(0, start, count), Up = s.Up?.narrow(0, start, count),
    };

    // AdapterHub's compose_parallel on the batch replicated once per child (by Apply, at the first slot with adapters).
    State Parallel(Composition c, State s, Module<Tensor, Tensor>? ln)
    {
        int n = c.Children.Count;
        long rows = s.Hidden.shape[0];
        if (ReplicatedBatch is not long b || rows != b * n)
            throw new PeftSharpException($"{c} needs the batch replicated {n} times: run it through PeftModel.Forward (layer {Layer} got {rows} rows)");
        s = PreBlock(c.Flatten().First(Holds), s, ln);
        var parts = c.Children.Select((child, i) => Effective(child) is { } held ? Child(held, Rows(s, i * b, b), ln) : Rows(s, i * b, b)).ToList();
        return new State(cat(parts.Select(p => p.Hidden).ToArray(), 0), cat(parts.Select(p => p.Input).ToArray(), 0),
            cat(parts.Select(p => p.Residual).ToArray(), 0), parts.All(p => p.Up is not null) ? cat(parts.Select(p => p.Up!).ToArray(), 0) : null,
            parts.Select(p => p.Last).LastOrDefault(l => l is not null) ?? s.Last);
    }

    // AdapterHub's compose_average with its BottleneckLayer.mean: mean over the N children of w_i * output_i, i.e.
    // sum_i w_i * output_i / N (weights normalized to sum 1 by default), taken as AdapterHub computes it.
    State Average(Composition c, State s, Module<Tensor, Tensor>? ln)
    {
        s = PreBlock(c.First, s, ln);
        var parts = c.Children.Select(child => Child(child, s, ln)).ToList();
        var w = tensor(c.Weights.ToArray(), s.Hidden.dtype, s.Hidden.device).view(-1, 1, 1, 1);
        var hidden = (stack(parts.Select(p => p.Hidden).ToArray(), 0) * w).mean(new long[] { 0 });
        return parts[0] with { Hidden = hidden, Last = parts[^1].Last };
    }

    State PreBlock(string name, State s, Module<Tensor, Tensor>? ln)
    {
        var (hidden, _, residual) = adapters[name].PreForward(s.Hidden, s.Input, ln);
        return s with { Hidden = hidden, Residual = residual };
    }

    State Single(string name, State s)
    {
        var (output, up) = adapters[name].Forward(s.Hidden, s.Residual);
        return s with { Hidden = output, Up = up, Last = name };
    }

    State Stack(Composition c, State s, Module<Tensor, Tensor>? ln)
    {
        foreach (var child in c.Children)
            s = child.Type == Composition.Kind.Single ? Single(child.Name!, PreBlock(child.Name!, s, ln)) : Compose(child, s, ln);
        return s;
    }

    State Fuse(Composition c, State s, Module<Tensor, Tensor>? ln)
    {
        var name = c.FusionName;
        if (!adapter_fusion_layer.Contains(name)) throw new PeftSharpException($"no fusion layer '{name}' in layer {Layer} ({Location}); load or add the fusion first");
        var fusion = adapter_fusion_layer[name];
        var last = c.Last;
        var (hidden, query, residual) = adapters[last].PreForward(s.Hidden, s.Input, ln, fusion.Config);
        s = s with { Hidden = hidden, Residual = residual };
        var ups = c.Children.Select(child => (child.Type == Composition.Kind.Single ? Single(child.Name!, s) : Compose(child, s, ln)).Up!).ToArray();
        var stacked = stack(ups, 2);
        return s with { Hidden = fusion.Forward(query!, stacked, s.Residual), Last = last };
    }

    // ---- IAdapterLayer ----

    public nn.Module BaseLayer => this;
    public IReadOnlyList<string> Adapters => adapters.Keys.ToList();
    public IReadOnlyList<string> ActiveAdapters => _setup is null ? Array.Empty<string>() : _setup.Flatten().Where(adapters.Contains).ToList();

    public void SetActiveAdapters(IReadOnlyList<string> names) =>
        _setup = names.Count == 0 ? null : names.Count == 1 ? Composition.Single(names[0]) : Composition.Stack(names.ToArray());

    public bool AdaptersDisabled { get; set; }
    public RowAdapters? RowAdapters => ForwardContext.Current?.Rows;
    public IReadOnlyList<string> MergedAdapters => Array.Empty<string>();

    public void Merge(IEnumerable<string> names)
    {
        var held = names.Where(adapters.Contains).ToList();
        if (held.Count > 0) throw new PeftSharpException($"bottleneck adapters ({string.Join(", ", held)}) cannot be merged into the base weights: they are non-linear; keep them or use Unload");
    }

    public void Unmerge() { }

    public void DeleteAdapter(string name)
    {
        adapters.Remove(name);
        foreach (var f in adapter_fusion_layer.Keys.ToList())
            if (f.Split(',').Contains(name)) adapter_fusion_layer.Remove(f);
    }

    public void SetTrainable(string name, bool trainable)
    {
        if (!adapters.Contains(name)) return;
        foreach (var p in adapters[name].parameters()) p.requires_grad = trainable;
    }

    public IEnumerable<(string Key, Tensor Value)> AdapterState(string adapter) =>
        adapters.Contains(adapter) ? adapters[adapter].named_parameters().Select(p => (p.name, (Tensor)p.parameter)) : Enumerable.Empty<(string, Tensor)>();

    public bool LoadAdapterState(string adapter, string key, Tensor value) =>
        adapters.Contains(adapter) && HubTensors.CopyInto(adapters[adapter], key, value);

    public nn.Module Unwrapped => Empty();
}

/// <summary>Copies checkpoint tensors into a module's named parameters (shape-checked).</summary>
internal static class HubTensors
{
    public static bool CopyInto(nn.Module m, string key, Tensor value)
    {
        var p = m.named_parameters().FirstOrDefault(x => x.name == key).parameter;
        if (p is null) return false;
        if (!p.shape.SequenceEqual(value.shape))
            throw new PeftFormatException(null, $"'{key}' has shape [{string.Join(", ", value.shape)}], the adapter expects [{string.Join(", ", p.shape)}]");
        using (no_grad()) p.copy_(value.to(p.dtype, p.device));
        return true;
    }
}
