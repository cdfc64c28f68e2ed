using System.Text.Json.Nodes;
using PeftSharp.IO;
using PeftSharp.Models;
using PeftSharp.Tuners.Bottleneck;
using PeftSharp.Tuners.PrefixTuning;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace PeftSharp.Tuners.AdapterHub;

/// <summary>
/// AdapterHub adapters in <see cref="PeftModel"/>: bottleneck adapters fill the blocks' <see cref="BlockSlot"/>s,
/// AdapterHub LoRA wraps the attention/FFN linears it names; files use AdapterHub's folder layout and key names.
/// </summary>
public sealed class AdapterHubMethod : IPeftMethod, IAdapterFolderFormat, IForwardHook
{
    public const string WeightsFile = "adapter.safetensors";
    public const string PickleWeightsFile = "pytorch_adapter.bin";

    public string PeftType => AdapterHubConfig.Type;

    public IReadOnlyList<Recipe> Recipes { get; } = new[] { AdapterFamilyTypes.Recipe("adapter"), AdapterFamilyTypes.Recipe("mam"), AdapterFamilyTypes.Recipe("unipelt") };
    public IReadOnlyList<BenchEntry> Bench => AdapterFamilyTypes.HubBench;
    string IPeftMethod.WeightsFile => WeightsFile;
    public AdapterDescription Describe(PeftConfig config) => new($"AdapterHub {Cast(config).Describe()}");

    public PeftConfig ParseConfig(JsonObject json, string source) => AdapterHubConfig.FromJson(json, source);

    static AdapterHubConfig Cast(PeftConfig c) => c as AdapterHubConfig ?? throw new PeftConfigException($"AdapterHub expects an AdapterHubConfig; got {c.GetType().Name}");

    public PeftConfig Prepare(PreTrainedModel model, PeftConfig config)
    {
        var c = Cast(config);
        if (c.Parts.Count == 0) throw new PeftConfigException("AdapterHub config has no parts (give a BottleneckConfig or HubLoraConfig)");
        if (c.ModelType is not null && c.ModelType != model.Config.ModelType)
            throw new PeftConfigException($"AdapterHub adapter was made for model_type '{c.ModelType}' but the model is '{model.Config.ModelType}'");
        if (c.HiddenSize is int h && h != model.Config.HiddenSize)
            throw new PeftConfigException($"AdapterHub adapter has hidden_size {h} but the model has {model.Config.HiddenSize}");
        return c with
        {
            HiddenSize = model.Config.HiddenSize,
            ModelType = model.Config.ModelType,
            ModelClass = c.ModelClass ?? model.Config.Architectures?.FirstOrDefault() ?? model.GetType().Name,
        };
    }

    public IReadOnlyList<string> Inject(PreTrainedModel model, PeftConfig config, string adapterName)
    {
        var c = Cast(config);
        var names = new List<string>();
        foreach (var part in c.Parts)
        {
            switch (part)
            {
                case BottleneckConfig b: names.AddRange(InjectBottleneck(model, b, adapterName)); break;
                case HubLoraConfig l: names.AddRange(InjectLora(model, l, adapterName)); break;
                case HubPrefixConfig p: names.AddRange(InjectPrefix(model, p, adapterName)); break;
            }
        }
        if (names.Count == 0) throw new PeftConfigException($"AdapterHub adapter '{adapterName}' fits no module of this {model.GetType().Name} (check leave_out and the locations)");
        return names;
    }

    /// <summary>Per part: a bottleneck adapter per slot it fills, LoRA's A and B per target, the prefix generator.</summary>
    public long AdapterElements(PreTrainedModel model, PeftConfig config)
    {
        long hidden = model.Config.HiddenSize;
        var (heads, headDim) = model.KvShape;
        long total = 0;
        foreach (var part in Cast(config).Parts)
            total = AdapterSize.Add(total, part switch
            {
                BottleneckConfig b => AdapterSize.Mul(BottleneckSlots(model, b).Count, BottleneckAdapter.Elements(b, hidden)),
                HubLoraConfig l => AdapterSize.Sum(model, LoraTargets(model, l).Select(t => t.Name), (_, i, o) => AdapterSize.Mul(l.R, i + o)),
                HubPrefixConfig p => AdapterSize.Add(AdapterSize.Mul(p.PrefixLength + 1 + hidden, p.BottleneckSize + 1),
                    AdapterSize.Mul(p.BottleneckSize + 1, 2L * model.Config.NumHiddenLayers * heads * headDim)),
                _ => 0,
            });
        return total;
    }

    static List<(string Name, BlockSlot Slot)> BottleneckSlots(PreTrainedModel model, BottleneckConfig b) =>
        model.named_modules().Where(m => m.module is BlockSlot s && !b.LeaveOut.Contains(s.Layer) && (s.Location == SlotLocation.Attention ? b.MhAdapter : b.OutputAdapter))
            .Select(m => (m.name, (BlockSlot)m.module)).ToList();

    static IEnumerable<string> InjectBottleneck(PreTrainedModel model, BottleneckConfig b, string adapterName)
    {
        if (!model.named_modules().Any(m => m.module is BlockSlot))
            throw new PeftSharpException($"{model.GetType().Name} has no adapter slots (BlockSlot); bottleneck adapters cannot be placed");
        foreach (var (name, slot) in BottleneckSlots(model, b))
        {
            var filled = slot as AdapterSlot ?? new AdapterSlot(slot);
            if (!ReferenceEquals(filled, slot)) ModuleSurgery.Replace(model, name, filled);
            var adapter = new BottleneckAdapter(b, model.Config.HiddenSize);
            adapter.to(model.DType).to(model.Device);
            adapter.train(model.training);
            filled.Add(adapterName, adapter);
            yield return name;
        }
    }

    /// <summary>The modules AdapterHub's LoRA wraps, by role, for each supported architecture.</summary>
    static bool IsLoraTarget(string modelType, string name, HubLoraConfig l)
    {
        var attn = l.SelfattnLora ? l.AttnMatrices : Array.Empty<string>();
        switch (modelType)
        {
            case "bert":
                return (attn.Contains("q") && name.EndsWith(".attention.self.query", StringComparison.Ordinal))
                    || (attn.Contains("k") && name.EndsWith(".attention.self.key", StringComparison.Ordinal))
                    || (attn.Contains("v") && name.EndsWith(".attention.self.value", StringComparison.Ordinal))
                    || (l.IntermediateLora && name.EndsWith(".intermediate.dense", StringComparison.Ordinal))
                    || (l.OutputLora && name.EndsWith(".output.dense", StringComparison.Ordinal) && !name.EndsWith(".attention.output.dense", StringComparison.Ordinal));
            case "llama" or "qwen2" or "mistral":
                // AdapterHub's naming: intermediate_lora wraps down_proj, output_lora wraps up_proj; gate_proj never.
                return attn.Any(m => name.EndsWith($".self_attn.{m}_proj", StringComparison.Ordinal))
                    || (l.IntermediateLora && name.EndsWith(".mlp.down_proj", StringComparison.Ordinal))
                    || (l.OutputLora && name.EndsWith(".mlp.up_proj", StringComparison.Ordinal));
            default:
                throw new PeftConfigException($"AdapterHub LoRA is not supported for model_type '{modelType}' in PeftSharp (supported: bert, llama, qwen2, mistral)");
        }
    }

    /// <summary>The block index in a module path (the number after layer/layers/h).</summary>
    internal static int LayerOf(string name)
    {
        var parts = name.Split('.');
        for (int i = 1; i < parts.Length; i++)
            if (parts[i - 1] is "layer" or "layers" or "h" && int.TryParse(parts[i], out var n)) return n;
        return -1;
    }

    static List<(string Name, nn.Module Module)> LoraTargets(PreTrainedModel model, HubLoraConfig l) =>
        model.named_modules()
            .Where(m => m.module is Linear or HubLoraLinear or HubPrefixProbe && IsLoraTarget(model.Config.ModelType, m.name, l) && !l.LeaveOut.Contains(LayerOf(m.name)))
            .Select(m => (m.name, m.module)).ToList();

    static IEnumerable<string> InjectLora(PreTrainedModel model, HubLoraConfig l, string adapterName)
    {
        foreach (var (name, module) in model.named_modules().Where(m => m.module is AdapterLayer and not HubLoraLinear && IsLoraTarget(model.Config.ModelType, m.name, l)))
            TargetMatcher.RefuseWrapped(name, module, "AdapterHub LoRA");
        var targets = LoraTargets(model, l);
        if (targets.FirstOrDefault(t => t.Module is HubPrefixProbe).Name is { } probed)
            throw new PeftConfigException($"AdapterHub LoRA on {probed} together with prefix tuning on the same module is not supported; add the LoRA adapter first");
        foreach (var (name, module) in targets)
        {
            var layer = module as HubLoraLinear ?? new HubLoraLinear((Linear)module);
            if (!ReferenceEquals(layer, module)) ModuleSurgery.Replace(model, name, layer);
            layer.Add(adapterName, l, trainable: true);
            yield return name;
        }
    }

    /// <summary>The module whose input is the attention input, per architecture (prefix probes wrap it).</summary>
    static string AttentionInputSuffix(string modelType) => modelType switch
    {
        "bert" => ".attention.self.key",
        "gpt2" => ".attn.c_attn",
        _ => ".self_attn.k_proj",
    };

    static IEnumerable<string> InjectPrefix(PreTrainedModel model, HubPrefixConfig p, string adapterName)
    {
        var suffix = AttentionInputSuffix(model.Config.ModelType);
        var targets = model.named_modules().Where(m => m.name.EndsWith(suffix, StringComparison.Ordinal))
            .Select(m => (m.name, Module: m.module as nn.Module<Tensor, Tensor> ?? throw new PeftSharpException($"{m.name} cannot be wrapped for prefix tuning")))
            .OrderBy(m => LayerOf(m.name)).ToList();
        if (targets.Count != model.Config.NumHiddenLayers)
            throw new PeftSharpException($"prefix tuning expects one '{suffix}' per layer ({model.Config.NumHiddenLayers}); found {targets.Count}");
        var owner = targets.Select(t => t.Module).OfType<HubPrefixProbe>().FirstOrDefault(x => x.OwnsPool);
        foreach (var (name, module) in targets)
        {
            var probe = module as HubPrefixProbe ?? new HubPrefixProbe(module, LayerOf(name), owner);
            if (!ReferenceEquals(probe, module)) ModuleSurgery.Replace(model, name, probe);
            owner ??= probe;
            if (p.UseGating) probe.AddGate(adapterName, model.Config.HiddenSize);
            probe.train(model.training);
            yield return name;
        }
        var (heads, headDim) = model.KvShape;
        var generator = new HubPrefixGenerator(p, model.Config.HiddenSize, model.Config.NumHiddenLayers, heads, headDim);
        generator.to(model.DType).to(model.Device);
        generator.train(model.training);
        owner!.Pool.Add(adapterName, generator);
    }

    /// <summary>
    /// With an active prefix: seeds the KV cache with the prefix of every layer (computed in the forward that seeds it,
    /// so training reaches the generator), extends the attention mask by the prefix and keeps the tokens at positions
    /// 0..seq-1 (<see cref="PrefixCache"/>, the seam peft's prefix tuning uses too).
    /// </summary>
    public ModelOutput Forward(PeftModel peft, ModelInputs inputs)
    {
        var slots = peft.AdapterLayers().Select(l => l.Layer).OfType<AdapterSlot>().Where(s => !s.AdaptersDisabled).ToList();
        int channels = slots.Select(s => s.Setup?.ParallelChannels ?? 1).DefaultIfEmpty(1).Max();
        if (channels > 1) return Replicated(peft, inputs, slots, channels);
        return PrefixForward(peft, inputs);
    }

    /// <summary>
    /// AdapterHub's Parallel: the batch is replicated once per channel at the first adapter layer (the slots do it, so
    /// the layers below run once for all copies: with AdapterDrop's leave_out that is the multi-task speed-up), and the
    /// output has channels x batch rows, copy i run through the setup's i-th child.
    /// </summary>
    static ModelOutput Replicated(PeftModel peft, ModelInputs inputs, List<AdapterSlot> slots, int channels)
    {
        if (inputs.Cache is not null)
            throw new PeftSharpException($"a Parallel composition returns {channels} outputs per row; generate with one adapter (or Stack/Average) at a time");
        var batch = inputs.Shape().Batch;
        foreach (var s in slots) s.ReplicatedBatch = batch;
        try { return PrefixForward(peft, inputs); }
        finally { foreach (var s in slots) s.ReplicatedBatch = null; }
    }

    static ModelOutput PrefixForward(PeftModel peft, ModelInputs inputs)
    {
        var (probes, active) = ActivePrefixes(peft);
        if (active.Count == 0) return peft.Model.Forward(inputs);
        if (inputs.Cache is { SeqLength: > 0 } && active.Any(a => probes.Any(p => p.HasGate(a.Adapter))))
            throw new PeftSharpException("AdapterHub gated prefix tuning (UniPELT) cannot continue from a KV cache: its gate averages over the whole sequence; run full forwards (TextGenerator does so for such adapters)");
        var run = new HubPrefixRun(active, inputs.Shape().Batch);
        foreach (var p in probes) p.Run = run;
        try { return PrefixCache.Forward(peft.Model, inputs, run.Length, run.Seed, shiftPositions: false); }
        finally { foreach (var p in probes) p.Run = null; }
    }

    static (List<HubPrefixProbe> Probes, List<(string Adapter, HubPrefixGenerator Generator)> Active) ActivePrefixes(PeftModel peft)
    {
        var probes = peft.AdapterLayers().Select(l => l.Layer).OfType<HubPrefixProbe>().ToList();
        var owner = probes.FirstOrDefault(p => p.OwnsPool);
        var active = owner is null || owner.AdaptersDisabled ? new List<(string, HubPrefixGenerator)>()
            : owner.ActiveAdapters.Where(owner.Pool.Contains).Select(a => (a, owner.Pool[a])).ToList();
        return (probes, active);
    }

    /// <summary>
    /// False while an active adapter has UniPELT gates: each is a mean over every sequence position, so a new token
    /// changes the states of the earlier ones and a KV cache would hold stale keys. (AdapterHub's own generate() uses
    /// its cache anyway and computes the gates from the new token alone.)
    /// </summary>
    public bool SupportsKVCache(PeftModel peft) => !peft.AdapterLayers().Any(l => !l.Layer.AdaptersDisabled && l.Layer switch
    {
        AdapterSlot s => s.ActiveAdapters.Any(a => s[a].Config.UseGating),
        HubLoraLinear h => h.ActiveAdapters.Any(a => h.IsGated(a)),
        HubPrefixProbe p => p.ActiveAdapters.Any(p.HasGate),
        _ => false,
    });

    // ---- files ----

    /// <summary>The base model's path (where AdapterHub keeps the model-level prefix_tuning): the part before the layer list.</summary>
    static string BaseOf(string path)
    {
        foreach (var marker in new[] { ".encoder.layer.", ".layers.", ".h." })
        {
            int i = path.IndexOf(marker, StringComparison.Ordinal);
            if (i >= 0) return path[..i];
        }
        foreach (var start in new[] { "encoder.layer.", "layers.", "h." })
            if (path.StartsWith(start, StringComparison.Ordinal)) return "";
        throw new PeftSharpException($"cannot tell the base model of {path}");
    }

    static string PrefixKey(string path, string local, string keyName) => local.StartsWith("pool.", StringComparison.Ordinal)
        ? Join(BaseOf(path), $"prefix_tuning.prefix_tunings.{keyName}.self_prefix.{local[5..]}")
        : Join(Parent(path), $"prefix_tuning.prefix_gates.{keyName}.{local[5..]}");

    /// <summary>AdapterHub also registers the prefix generator under every attention layer (same tensors): those keys are aliases.</summary>
    static string PoolAlias(string probePath, string local, string keyName) => Join(Parent(probePath), $"prefix_tuning.pool.prefix_tunings.{keyName}.self_prefix.{local[5..]}");

    static bool IsPoolAlias(string key) => key.Contains(".prefix_tuning.pool.prefix_tunings.", StringComparison.Ordinal);

    static string Parent(string path) { int dot = path.LastIndexOf('.'); return dot < 0 ? "" : path[..dot]; }
    static string Join(string a, string b) => a.Length == 0 ? b : a + "." + b;

    /// <summary>One adapter's tensors under AdapterHub's key names, with <paramref name="keyName"/> as the adapter name in them.</summary>
    public static Dictionary<string, (IAdapterLayer Layer, string Local, Tensor Value)> HubState(PeftModel peft, string adapter, string keyName)
    {
        var result = new Dictionary<string, (IAdapterLayer, string, Tensor)>();
        foreach (var (path, layer) in peft.AdapterLayers())
        {
            // Another PeftModel's wrapper over the same base model (a server's LoRA adapters) holds none of this adapter.
            if (layer is not (AdapterSlot or HubLoraLinear or HubPrefixProbe) && !layer.Adapters.Contains(adapter)) continue;
            string? prefix = layer switch
            {
                AdapterSlot s => Join(s.KeysInParent ? Parent(path) : path, $"adapters.{keyName}"),
                HubLoraLinear => $"{path}.loras.{keyName}",
                HubPrefixProbe => null,
                _ => throw new PeftSharpException($"{path} holds a {layer.GetType().Name}, which AdapterHub files cannot describe"),
            };
            foreach (var (local, value) in layer.AdapterState(adapter))
                result[prefix is null ? PrefixKey(path, local, keyName) : $"{prefix}.{local}"] = (layer, local, value);
        }
        return result;
    }

    public void SaveWeights(PeftModel peft, string dir, string adapterName)
    {
        var config = (AdapterHubConfig)peft.Configs[adapterName] with { Name = adapterName };
        var state = HubState(peft, adapterName, adapterName).ToDictionary(kv => kv.Key, kv => kv.Value.Value);
        var probes = peft.AdapterLayers().Where(l => l.Layer is HubPrefixProbe).ToList();
        foreach (var (path, _) in probes)
            foreach (var (local, value) in probes.Select(p => p.Layer).OfType<HubPrefixProbe>().First(p => p.OwnsPool).AdapterState(adapterName))
                if (local.StartsWith("pool.", StringComparison.Ordinal)) state[PoolAlias(path, local, adapterName)] = value;
        SafetensorsWriter.Save(Path.Combine(dir, WeightsFile), state, new Dictionary<string, string> { ["format"] = "pt" });
        AtomicFile.WriteAllText(Path.Combine(dir, AdapterFiles.ConfigFile), config.ToJson().ToJsonString(new System.Text.Json.JsonSerializerOptions { WriteIndented = true }) + "\n");
    }

    /// <summary>The safetensors file of an AdapterHub folder; a pickle-only folder is an error that says how to convert it.</summary>
    internal static string RequireSafetensors(string dir, string file, string pickle, string how)
    {
        var path = Path.Combine(dir, file);
        if (File.Exists(path)) return path;
        if (File.Exists(Path.Combine(dir, pickle)))
            throw new PeftFormatException(dir, $"only {pickle} (a pickle, which PeftSharp never loads) found; convert it to {file} with adapters: {how}");
        throw new PeftFormatException(dir, $"no {file} in the AdapterHub folder");
    }

    public void LoadWeights(PeftModel peft, string dir, string adapterName)
    {
        var path = RequireSafetensors(dir, WeightsFile, PickleWeightsFile, "model.save_adapter(dir, name, use_safetensors=True)");
        var savedName = ((AdapterHubConfig)peft.Configs[adapterName]).Name ?? adapterName;
        var expected = HubState(peft, adapterName, savedName);
        using var file = SafetensorsFile.Open(path);
        LoadInto(file, expected.ToDictionary(kv => kv.Key, kv => (kv.Value.Layer, kv.Value.Local)), path, (l, k, v) => l.LoadAdapterState(adapterName, k, v));
    }

    internal static void LoadInto<TLayer>(SafetensorsFile file, Dictionary<string, (TLayer Layer, string Local)> expected, string path, Func<TLayer, string, Tensor, bool> load)
    {
        var unexpected = new List<string>();
        var loaded = new HashSet<string>();
        foreach (var key in file.Keys)
        {
            if (!expected.TryGetValue(key, out var e)) { if (!IsPoolAlias(key)) unexpected.Add(key); continue; }
            using var value = file.Load(key);
            try
            {
                if (load(e.Layer, e.Local, value)) loaded.Add(key);
                else unexpected.Add(key);
            }
            catch (PeftFormatException ex) when (ex.FilePath is null) { throw new PeftFormatException(path, $"'{key}': {ex.Message}"); }
        }
        var missing = expected.Keys.Where(k => !loaded.Contains(k)).ToList();
        if (missing.Count == 0 && unexpected.Count == 0) return;
        var parts = new List<string>();
        if (missing.Count > 0) parts.Add($"missing tensors: {string.Join(", ", missing.Take(8))}{(missing.Count > 8 ? $" (+{missing.Count - 8} more)" : "")}");
        if (unexpected.Count > 0) parts.Add($"keys that fit no adapter module of the model: {string.Join(", ", unexpected.Take(8))}{(unexpected.Count > 8 ? $" (+{unexpected.Count - 8} more)" : "")}");
        throw new PeftFormatException(path, $"AdapterHub weights do not fit the config and the model: {string.Join(" | ", parts)}");
    }
}
