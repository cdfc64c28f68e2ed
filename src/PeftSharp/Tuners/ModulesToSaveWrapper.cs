using PeftSharp.Models;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;
using static TorchSharp.torch.nn;

namespace PeftSharp.Tuners;

/// <summary>
/// peft's ModulesToSaveWrapper: the frozen <c>original_module</c> plus one fully trainable copy per adapter in
/// <c>modules_to_save</c>. The forward uses the active adapter's copy. Checkpoint keys are the original
/// parameter names under the wrapper path (the <c>modules_to_save.&lt;adapter&gt;</c> segment is dropped).
/// </summary>
public sealed class ModulesToSaveWrapper : nn.Module<Tensor, Tensor>, IAdapterLayer
{
    Module<Tensor, Tensor> original_module;
    readonly AdapterModules<Module<Tensor, Tensor>> modules_to_save = new();
    readonly List<string> _active = new();

    public ModulesToSaveWrapper(Module<Tensor, Tensor> original) : base(nameof(ModulesToSaveWrapper))
    {
        original_module = original;
        RegisterComponents();
    }

    public nn.Module BaseLayer => original_module;
    public IReadOnlyList<string> Adapters => modules_to_save.Keys.ToList();
    public IReadOnlyList<string> ActiveAdapters => _active;
    public bool AdaptersDisabled { get; set; }
    public RowAdapters? RowAdapters => ForwardContext.Current?.Rows;
    public IReadOnlyList<string> MergedAdapters => Array.Empty<string>();

    public void AddAdapter(string adapter, bool trainable)
    {
        var copy = Clone(original_module);
        foreach (var p in copy.parameters()) p.requires_grad = trainable;
        modules_to_save.Add(adapter, copy);
    }

    public void SetActiveAdapters(IReadOnlyList<string> names)
    {
        var mine = names.Where(modules_to_save.Contains).ToList();
        if (mine.Count > 1) throw new PeftSharpException($"modules_to_save allows one active adapter; got {string.Join(", ", mine)}");
        _active.Clear();
        _active.AddRange(mine);
    }

    public override Tensor forward(Tensor x)
    {
        if (AdaptersDisabled) return original_module.call(x);
        if (RowAdapters is { } rows) return MixedForward(x, rows);
        return _active.Count == 0 ? original_module.call(x) : modules_to_save[_active[0]].call(x);
    }

    // Each row group goes through its adapter's copy (the original for __base__ or adapters this wrapper lacks).
    Tensor MixedForward(Tensor x, RowAdapters rows)
    {
        using var scope = NewDisposeScope();
        Tensor? result = null;
        foreach (var name in rows.Distinct)
        {
            var idx = rows.Rows(name);
            var module = modules_to_save.Contains(name) ? modules_to_save[name] : original_module;
            var y = module.call(x.index_select(0, idx));
            result ??= zeros(new[] { x.shape[0] }.Concat(y.shape.Skip(1)).ToArray(), dtype: y.dtype, device: y.device);
            result = result.index_copy(0, idx, y);
        }
        return result!.MoveToOuterDisposeScope();
    }

    public void Merge(IEnumerable<string> names) { }
    public void Unmerge() { }

    public void DeleteAdapter(string name)
    {
        modules_to_save.Remove(name);
        _active.Remove(name);
    }

    public void SetTrainable(string name, bool trainable)
    {
        if (!modules_to_save.Contains(name)) return;
        foreach (var p in modules_to_save[name].parameters()) p.requires_grad = trainable;
    }

    public IEnumerable<(string Key, Tensor Value)> AdapterState(string adapter) =>
        modules_to_save.Contains(adapter) ? modules_to_save[adapter].state_dict().Select(kv => (kv.Key, kv.Value)) : Enumerable.Empty<(string, Tensor)>();

    public bool LoadAdapterState(string adapter, string key, Tensor value)
    {
        if (!modules_to_save.Contains(adapter)) return false;
        var sd = modules_to_save[adapter].state_dict();
        if (!sd.TryGetValue(key, out var target)) return false;
        if (!target.shape.SequenceEqual(value.shape))
            throw new PeftFormatException(null, $"modules_to_save tensor '{key}' has shape [{string.Join(", ", value.shape)}], expected [{string.Join(", ", target.shape)}]");
        using (no_grad()) target.copy_(value);
        return true;
    }

    public nn.Module Unwrapped => _active.Count == 0 ? original_module : modules_to_save[_active[0]];

    /// <summary>A trainable copy with the same weights (layers whose constructor arguments can be read back).</summary>
    internal static Module<Tensor, Tensor> Clone(Module<Tensor, Tensor> m)
    {
        Module<Tensor, Tensor> copy = m switch
        {
            Linear l => nn.Linear(l.in_features, l.out_features, l.bias is not null, l.weight.device, l.weight.dtype),
            TiedLMHead t => nn.Linear(t.Weight.shape[1], t.Weight.shape[0], false, t.Weight.device, t.Weight.dtype),
            Conv1D c => new Conv1D(c.OutFeatures, c.InFeatures).to(c.weight.device).to(c.weight.dtype),
            Embedding e => nn.Embedding(e.weight!.shape[0], e.weight.shape[1], device: e.weight.device, dtype: e.weight.dtype),
            _ => throw new PeftConfigException($"modules_to_save: cannot copy a {m.GetType().Name} (supported: Linear, Conv1D, Embedding, tied LM head)"),
        };
        using (no_grad())
        {
            var src = m is TiedLMHead tied ? new Dictionary<string, Tensor> { ["weight"] = tied.Weight } : m.state_dict();
            foreach (var (k, v) in copy.state_dict()) v.copy_(src[k]);
        }
        return copy;
    }
}
