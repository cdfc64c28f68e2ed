using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;
using static TorchSharp.torch.nn;

namespace PeftSharp.Tuners;

/// <summary>
/// peft's per-adapter nn.ModuleDict: one child module per adapter name, added and removed at any time
/// (TorchSharp's ModuleDict registers its entries only once). Entries are always read from the registry, so
/// <c>to(device)</c> and similar stay in sync.
/// </summary>
public sealed class AdapterModules<T> : nn.Module where T : nn.Module
{
    public AdapterModules() : base("ModuleDict") { }

    public void Add(string adapter, T module)
    {
        if (_internal_submodules.ContainsKey(adapter)) throw new PeftSharpException($"adapter '{adapter}' already exists in this layer");
        register_module(adapter, module);
    }

    public bool Contains(string adapter) => _internal_submodules.ContainsKey(adapter);

    public T this[string adapter] => (T)_internal_submodules[adapter];

    public IEnumerable<string> Keys => _internal_submodules.Keys;

    public void Remove(string adapter)
    {
        if (!_internal_submodules.TryGetValue(adapter, out var m)) return;
        _internal_submodules.Remove(adapter);
        m.Dispose();
    }
}

/// <summary>peft's per-adapter nn.ParameterDict: one parameter per adapter name.</summary>
public sealed class AdapterParameters : nn.Module
{
    public AdapterParameters() : base("ParameterDict") { }

    public void Add(string adapter, Parameter p)
    {
        if (_internal_params.ContainsKey(adapter)) throw new PeftSharpException($"adapter '{adapter}' already exists in this layer");
        register_parameter(adapter, p);
    }

    public bool Contains(string adapter) => _internal_params.ContainsKey(adapter);

    public Parameter this[string adapter] => _internal_params[adapter];

    public void Remove(string adapter)
    {
        if (!_internal_params.TryGetValue(adapter, out var p)) return;
        _internal_params.Remove(adapter);
        p.Dispose();
    }
}

/// <summary>A module that only owns a parameter named "weight" (peft's DoRA magnitude lives in one).</summary>
public sealed class WeightHolder : nn.Module
{
    public Parameter weight;

    public WeightHolder(Tensor value) : base("ParamHolder")
    {
        weight = new Parameter(value);
        RegisterComponents();
    }
}
