using PeftSharp.IO;
using PeftSharp.Models;
using PeftSharp.Quantization;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;
using static TorchSharp.torch.nn;

namespace PeftSharp.Tuners;

/// <summary>peft's tuner model (LoraModel, ...): holds the user model under the name <c>model</c>.</summary>
public sealed class TunerModel : nn.Module
{
    internal readonly PreTrainedModel model;

    public TunerModel(PreTrainedModel model) : base(nameof(TunerModel))
    {
        this.model = model;
        RegisterComponents();
    }
}

/// <summary>
/// A model with named adapters, the equivalent of HF peft's <c>PeftModel</c> (one type for every method).
/// Parameter names follow peft: <c>base_model.model.&lt;module path&gt;...</c>. The wrapped model is changed in
/// place (its targeted modules are replaced by adapter wrappers), so <see cref="Model"/>'s own forward runs the adapters.
/// </summary>
/// <remarks>
/// HF equivalents: Create = get_peft_model, FromPretrained = PeftModel.from_pretrained, LoadAdapter = load_adapter,
/// AddAdapter = add_adapter, SetAdapter = set_adapter, DeleteAdapter = delete_adapter, DisableAdapters = disable_adapter(),
/// Merge/Unmerge = merge_adapter/unmerge_adapter, MergeAndUnload = merge_and_unload, Unload = unload,
/// AddWeightedAdapter = add_weighted_adapter, SaveAdapter = save_pretrained, Forward(inputs, adapterNames) =
/// forward(..., adapter_names=...), PrintTrainableParameters = print_trainable_parameters.
/// </remarks>
public sealed class PeftModel : nn.Module, ILanguageModel
{
    readonly TunerModel base_model;
    // Prompt-learning adapters (peft's prompt_encoder ModuleDict): run around the base forward, not inside it.
    readonly AdapterModules<PromptLearning.PromptLearner> prompt_encoder = new();
    bool _promptDisabled;
    readonly List<string> _order = new();
    readonly Dictionary<string, PeftConfig> _configs = new();
    bool _unloaded;

    PeftModel(PreTrainedModel model) : base(nameof(PeftModel))
    {
        base_model = new TunerModel(model);
        RegisterComponents();
    }

    /// <summary>The user model (with adapter wrappers in place).</summary>
    public PreTrainedModel Model => _unloaded ? throw new PeftSharpException("this PeftModel was unloaded; use the model MergeAndUnload/Unload returned") : base_model.model;

    /// <summary>Filled into base_model_name_or_path on save when the config has none (peft uses the model's name_or_path).</summary>
    public string? BaseModelPath { get; set; }

    public string ActiveAdapter { get; private set; } = "default";
    public IReadOnlyList<string> Adapters => _order;
    public IReadOnlyDictionary<string, PeftConfig> Configs => _configs;
    public PeftConfig ActiveConfig => _configs[ActiveAdapter];

    /// <summary>The active adapter's prompt learner (Prompt Tuning, P-Tuning, Prefix Tuning), or null.</summary>
    public PromptLearning.PromptLearner? ActivePromptLearner =>
        !_promptDisabled && prompt_encoder.Contains(ActiveAdapter) ? prompt_encoder[ActiveAdapter] : null;

    /// <summary>The prompt learner of a prompt-learning adapter, or null for other methods.</summary>
    public PromptLearning.PromptLearner? PromptLearnerOf(string adapterName) =>
        prompt_encoder.Contains(adapterName) ? prompt_encoder[adapterName] : null;

    ModelConfig ILanguageModel.Config => Model.Config;
    public bool IsCausalLM => Model.IsCausalLM;
    public Device Device => Model.Device;
    public KVCache NewCache() => Model.NewCache();

    /// <inheritdoc cref="ILanguageModel.SupportsKVCache"/>
    public bool SupportsKVCache => ActivePromptLearner is not null
        || !_configs.TryGetValue(ActiveAdapter, out var c)
        || PeftMethods.For(c) is var m && m.Capabilities.KvCacheGeneration && (m is not IForwardHook hook || hook.SupportsKVCache(this));

    /// <summary>Every adapter wrapper with its module path relative to <see cref="Model"/>.</summary>
    public IEnumerable<(string Name, IAdapterLayer Layer)> AdapterLayers() =>
        Model.named_modules().Where(m => m.module is IAdapterLayer).Select(m => (m.name, (IAdapterLayer)m.module));

    // ---- creation and loading ----

    /// <summary>get_peft_model: freezes the model and adds a trainable adapter (inactive adapters are added by <see cref="AddAdapter"/>).</summary>
    public static PeftModel Create(PreTrainedModel model, PeftConfig config, string adapterName = "default") => Create(model, config, adapterName, null);

    static PeftModel Create(PreTrainedModel model, PeftConfig config, string adapterName, string? source)
    {
        foreach (var p in model.parameters()) p.requires_grad = false;
        var peft = new PeftModel(model) { BaseModelPath = config.BaseModelNameOrPath };
        peft.Inject(adapterName, config, source: source);
        peft.ActiveAdapter = adapterName;
        peft.ApplyActive();
        peft.ApplyBiasTrainability(adapterName);
        return peft;
    }

    /// <summary>PeftModel.from_pretrained: loads an adapter folder onto <paramref name="model"/>; frozen and in eval mode unless trainable.</summary>
    public static PeftModel FromPretrained(PreTrainedModel model, string adapterDir, string adapterName = "default", bool isTrainable = false)
    {
        adapterDir = HfHubCache.ResolveFolder(adapterDir, "adapter");
        var config = PeftMethods.LoadConfig(adapterDir) with { InferenceMode = !isTrainable };
        var peft = Create(model, config, adapterName, Path.Combine(adapterDir, AdapterFiles.ConfigFile));
        peft.LoadWeights(adapterDir, adapterName);
        if (!isTrainable) peft.eval();
        return peft;
    }

    /// <summary>Loads several adapter folders (the first becomes active), e.g. for mixed-adapter batches.</summary>
    public static PeftModel LoadWithAdapters(PreTrainedModel model, IEnumerable<(string Name, string Dir)> adapters)
    {
        var list = adapters.ToList();
        if (list.Count == 0) throw new PeftSharpException("LoadWithAdapters needs at least one adapter");
        var peft = FromPretrained(model, list[0].Dir, list[0].Name);
        foreach (var (name, dir) in list.Skip(1)) peft.LoadAdapter(dir, name);
        return peft;
    }

    /// <summary>
    /// add_adapter: injects a new, inactive and frozen adapter of the same method, or of another method when both mix in
    /// one batch (<see cref="MethodCapabilities.MixedBatch"/>: LoRA, IA³, VeRA, ...; peft's mixed model), so one container
    /// serves them all. Targets already wrapped by another method's adapters are refused, not skipped.
    /// </summary>
    public void AddAdapter(string adapterName, PeftConfig config) => AddAdapter(adapterName, config, null);

    void AddAdapter(string adapterName, PeftConfig config, string? source)
    {
        if (_configs.Count > 0 && config.PeftType != _configs[_order[0]].PeftType && !(Mixable(config) && _configs.Values.All(Mixable)))
            throw new PeftConfigException($"adapter '{adapterName}' is {config.PeftType} but this model holds {_configs[_order[0]].PeftType} adapters; one method per PeftModel (only methods whose adapters mix in one batch share one)");
        Inject(adapterName, config, trainable: false, source: source);
        ApplyActive();
    }

    static bool Mixable(PeftConfig c) => PeftMethods.For(c).Capabilities.MixedBatch;

    /// <summary>load_adapter: adds an adapter from a folder under <paramref name="adapterName"/> (not activated).</summary>
    public void LoadAdapter(string adapterDir, string adapterName, bool isTrainable = false)
    {
        adapterDir = HfHubCache.ResolveFolder(adapterDir, "adapter");
        var config = PeftMethods.LoadConfig(adapterDir) with { InferenceMode = !isTrainable };
        AddAdapter(adapterName, config, Path.Combine(adapterDir, AdapterFiles.ConfigFile));
        LoadWeights(adapterDir, adapterName);
        if (!isTrainable) eval();
    }

    /// <summary>Replaces an adapter's stored config by one of the same method (AdaLoRA's allocator records rank_pattern this way).</summary>
    public void UpdateConfig(string adapterName, PeftConfig config)
    {
        RequireAdapter(adapterName);
        if (config.PeftType != _configs[adapterName].PeftType)
            throw new PeftConfigException($"adapter '{adapterName}' is {_configs[adapterName].PeftType}; cannot replace its config by a {config.PeftType} one");
        _configs[adapterName] = config;
    }

    /// <param name="source">The adapter_config.json the config came from (named by errors), or null.</param>
    void Inject(string adapterName, PeftConfig config, bool trainable = true, string? source = null)
    {
        try { InjectChecked(adapterName, config, trainable, source); }
        catch (TargetOverlapException e) { throw e.For(adapterName, config.PeftType); }
    }

    void InjectChecked(string adapterName, PeftConfig config, bool trainable, string? source)
    {
        if (_configs.ContainsKey(adapterName)) throw new PeftSharpException($"adapter '{adapterName}' already exists (adapters: {string.Join(", ", _order)})");
        if (adapterName.Length == 0 || adapterName.Contains('.')) throw new PeftSharpException($"adapter name '{adapterName}' must be non-empty and contain no '.'");
        var method = PeftMethods.For(config);
        var prepared = method.Prepare(Model, config);
        AdapterSize.Check(method.AdapterElements(Model, prepared), source ?? $"adapter '{adapterName}'", prepared.PeftType);
        try
        {
            method.Inject(Model, prepared, adapterName);
            if (method is PromptLearning.IPromptLearningMethod pm)
                prompt_encoder.Add(adapterName, pm.CreateLearner(Model, (PromptLearning.PromptLearningConfig)prepared));
        }
        catch
        {
            foreach (var (_, layer) in AdapterLayers().ToList()) layer.DeleteAdapter(adapterName);
            prompt_encoder.Remove(adapterName);
            throw;
        }
        _configs[adapterName] = prepared;
        _order.Add(adapterName);
        foreach (var (_, layer) in AdapterLayers()) layer.SetTrainable(adapterName, trainable && !prepared.InferenceMode);
        SetLearnerTrainable(adapterName, trainable && !prepared.InferenceMode);
    }

    void SetLearnerTrainable(string adapterName, bool trainable)
    {
        if (!prompt_encoder.Contains(adapterName)) return;
        foreach (var p in prompt_encoder[adapterName].parameters()) p.requires_grad = trainable;
    }

    void ApplyActive()
    {
        foreach (var (_, layer) in AdapterLayers()) layer.SetActiveAdapters(new[] { ActiveAdapter });
    }

    // peft-spec §1.5: bias "all" trains every bias, "lora_only" the biases of adapted layers.
    void ApplyBiasTrainability(string adapterName)
    {
        if (_configs[adapterName] is not Lora.LoraConfig { InferenceMode: false } c || c.Bias == "none") return;
        if (c.Bias == "all")
        {
            foreach (var (name, p) in Model.named_parameters())
                if (name == "bias" || name.EndsWith(".bias", StringComparison.Ordinal)) p.requires_grad = true;
            return;
        }
        foreach (var (_, layer) in AdapterLayers())
            if (layer is Lora.LoraLayer && layer.Adapters.Contains(adapterName) && layer.BaseLayer.named_parameters(false).FirstOrDefault(p => p.name == "bias").parameter is { } b)
                b.requires_grad = true;
    }

    // ---- switching ----

    /// <summary>set_adapter: makes one adapter active (trainable unless loaded for inference) and freezes the others.</summary>
    public void SetAdapter(string adapterName)
    {
        RequireAdapter(adapterName);
        if (AdapterLayers().Any(l => l.Layer.MergedAdapters.Count > 0))
        {
            PeftMethods.Warn("adapters are merged; unmerging before switching the active adapter");
            Unmerge();
        }
        ActiveAdapter = adapterName;
        foreach (var (_, layer) in AdapterLayers())
        {
            foreach (var a in layer.Adapters) layer.SetTrainable(a, a == adapterName && !_configs[a].InferenceMode);
        }
        foreach (var a in _order) SetLearnerTrainable(a, a == adapterName && !_configs[a].InferenceMode);
        ApplyActive();
    }

    /// <summary>delete_adapter: removes an adapter everywhere; if it was active, the alphabetically first remaining one becomes active.</summary>
    public void DeleteAdapter(string adapterName)
    {
        RequireAdapter(adapterName);
        foreach (var (name, layer) in AdapterLayers())
            if (layer.MergedAdapters.Contains(adapterName)) throw new PeftSharpException($"adapter '{adapterName}' is merged in {name}; unmerge first");
        foreach (var (_, layer) in AdapterLayers().ToList()) layer.DeleteAdapter(adapterName);
        prompt_encoder.Remove(adapterName);
        _configs.Remove(adapterName);
        _order.Remove(adapterName);
        if (ActiveAdapter == adapterName && _order.Count > 0)
        {
            var next = _order.OrderBy(a => a, StringComparer.Ordinal).First();
            PeftMethods.Warn($"adapter '{adapterName}' was active; '{next}' is now active");
            ActiveAdapter = next;
            ApplyActive();
        }
    }

    /// <summary>disable_adapter(): inside the scope the model computes its base outputs (merged adapters are unmerged first).</summary>
    public IDisposable DisableAdapters()
    {
        if (AdapterLayers().Any(l => l.Layer.MergedAdapters.Count > 0)) Unmerge();
        var layers = AdapterLayers().Select(l => l.Layer).ToList();
        foreach (var l in layers) l.AdaptersDisabled = true;
        _promptDisabled = true;
        return new Scope(() => { foreach (var l in layers) l.AdaptersDisabled = false; _promptDisabled = false; });
    }

    sealed class Scope(Action onDispose) : IDisposable
    {
        bool _done;
        public void Dispose() { if (_done) return; _done = true; onDispose(); }
    }

    void RequireAdapter(string name)
    {
        if (!_configs.ContainsKey(name)) throw new PeftSharpException($"adapter '{name}' does not exist (adapters: {string.Join(", ", _order)})");
    }

    // ---- forward ----

    /// <summary>
    /// The model's forward with the active adapter: a prompt-learning adapter changes the inputs (see
    /// <see cref="PromptLearning.PromptLearner"/>), a method with a forward hook (AdapterHub prefixes) wraps the call.
    /// </summary>
    public ModelOutput Forward(ModelInputs inputs) =>
        ActivePromptLearner is { } learner ? learner.Forward(Model, inputs)
        : _configs.TryGetValue(ActiveAdapter, out var c) && PeftMethods.For(c) is IForwardHook hook ? hook.Forward(this, inputs)
        : Model.Forward(inputs);

    /// <summary>Labels for the active adapter's output: -100 in front for the virtual positions of Prompt Tuning / P-Tuning (peft pads them the same way).</summary>
    public Tensor ExtendLabels(Tensor labels) => ActivePromptLearner?.ExtendLabels(labels) ?? labels.alias();

    /// <summary>
    /// Forward where row i uses adapter <paramref name="adapterNames"/>[i] or <see cref="RowAdapters.Base"/> (peft's
    /// adapter_names). One pass through the model: each adapter layer applies its adapters to their rows.
    /// </summary>
    public ModelOutput Forward(ModelInputs inputs, IReadOnlyList<string>? adapterNames)
    {
        if (adapterNames is null) return Forward(inputs);
        using var rows = new RowAdapters(adapterNames, Model.Device);
        return Forward(inputs, rows);
    }

    /// <summary>
    /// <see cref="Forward(ModelInputs, IReadOnlyList{string})"/> with a <see cref="RowAdapters"/> the caller owns: a
    /// decode loop keeps one while its rows stay the same, so layers reuse the per-row weights they gathered into it.
    /// </summary>
    public ModelOutput Forward(ModelInputs inputs, RowAdapters rows)
    {
        var (batch, _) = inputs.Shape();
        if (rows.PerRow.Count != batch) throw new PeftSharpException($"adapter names: got {rows.PerRow.Count} for a batch of {batch} rows");
        foreach (var n in rows.Distinct)
            if (n != RowAdapters.Base && !_configs.ContainsKey(n))
                throw new PeftSharpException($"adapter '{n}' in the per-row names does not exist (adapters: {string.Join(", ", _order)}, or {RowAdapters.Base})");
        foreach (var n in rows.Distinct.Where(_configs.ContainsKey))
            if (_configs[n] is PromptLearning.PromptLearningConfig or AdaptionPrompt.AdaptionPromptConfig)
                throw new PeftSharpException($"adapter '{n}' is {_configs[n].PeftType}: mixed-adapter batches support adapters that replace modules (LoRA family), not prompt-family adapters; run it in a batch of its own");
        var layers = AdapterLayers().Select(l => l.Layer).ToList();
        if (layers.Any(l => l.MergedAdapters.Count > 0)) throw new PeftSharpException("mixed-adapter batches need unmerged adapters; call Unmerge() first");
        if (layers.Any(l => l.AdaptersDisabled)) throw new PeftSharpException("mixed-adapter batches cannot run inside DisableAdapters()");
        using var ctx = ForwardContext.Enter(rows);
        return Model.Forward(inputs);
    }

    // ---- merging ----

    /// <summary>merge_adapter: folds the active adapter (or the given ones) into the base weights; the adapter tensors stay.</summary>
    public void Merge(IEnumerable<string>? adapterNames = null)
    {
        var names = (adapterNames ?? new[] { ActiveAdapter }).ToList();
        foreach (var n in names) RequireAdapter(n);
        foreach (var n in names.Where(n => !PeftMethods.For(_configs[n]).Capabilities.Merge))
            throw new PeftSharpException($"adapter '{n}' is {_configs[n].PeftType}: its adapters change the inputs or attention, not the weights, and cannot be merged (peft neither)");
        var layers = AdapterLayers().ToList();
        using var progress = Runtime.PeftProgress.Begin($"merging {string.Join(" + ", names)}", layers.Count, "modules");
        for (int i = 0; i < layers.Count; i++)
        {
            layers[i].Layer.Merge(names);
            progress.Report(i + 1, layers[i].Name);
        }
    }

    /// <summary>unmerge_adapter: subtracts every merged adapter again, in reverse order.</summary>
    public void Unmerge()
    {
        foreach (var (_, layer) in AdapterLayers()) layer.Unmerge();
    }

    /// <summary>
    /// merge_and_unload: merges the active adapter and returns the plain model (wrappers removed). A 4-bit (QLoRA)
    /// base comes back fully dequantized: a float model, never re-quantized (docs/qlora.md).
    /// </summary>
    public PreTrainedModel MergeAndUnload()
    {
        Merge();
        var model = Unload();
        QuantizedModelLoader.Dequantize(model);
        return model;
    }

    /// <summary>unload: removes every wrapper without merging and returns the plain model.</summary>
    public PreTrainedModel Unload()
    {
        var model = Model;
        // Innermost first is not needed: wrappers never nest (targets inside a wrapper are not candidates).
        foreach (var (name, layer) in AdapterLayers().ToList()) ModuleSurgery.Replace(model, name, layer.Unwrapped);
        _unloaded = true;
        return model;
    }

    /// <summary>
    /// Writes the model with the active adapter merged as a Hugging Face model folder (config.json +
    /// model.safetensors, plain transformers key names) without changing this PeftModel: merge, save, unmerge.
    /// </summary>
    public void SaveMerged(string dir, Action<string>? alsoWrite = null)
    {
        var model = Model;
        Merge();
        try
        {
            var wrappers = AdapterLayers().ToList();
            var plain = new Dictionary<string, Tensor>();
            foreach (var (key, value) in model.state_dict())
                if (!wrappers.Any(w => key.StartsWith(w.Name + ".", StringComparison.Ordinal))) plain[key] = value;
            foreach (var (name, layer) in wrappers)
                foreach (var (key, value) in layer.Unwrapped.state_dict()) plain[name + "." + key] = value;
            foreach (var tied in model.TiedKeys) plain.Remove(tied);
            // A 4-bit base is written as a float model: untargeted 4-bit layers dequantized, no quantization_config.
            QuantizedModelLoader.DequantizeStateDict(model, plain);
            var config = model.Config.Raw.DeepClone().AsObject();
            config.Remove("quantization_config");
            // The whole folder is replaced: an old shard index or shards never survive next to the merged weights.
            AtomicFolder.Write(dir, tmp =>
            {
                SafetensorsWriter.Save(Path.Combine(tmp, Checkpoint.SingleFile), plain, new Dictionary<string, string> { ["format"] = "pt" });
                AtomicFile.WriteAllText(Path.Combine(tmp, "config.json"), config.ToJsonString(ModelConfig.Json));
                alsoWrite?.Invoke(tmp);
            });
        }
        finally { Unmerge(); }
    }

    // ---- saving and loading adapter files ----

    /// <summary>Prefix of every checkpoint key (peft's PeftModel.base_model.model).</summary>
    public const string KeyPrefix = "base_model.model.";
    /// <summary>Prefix of modules_to_save keys of prompt-learning adapters.</summary>
    public const string PromptKeyPrefix = "base_model.";
    /// <summary>The one key a prompt-learning adapter's own tensor is saved under.</summary>
    public const string PromptEmbeddingsKey = "prompt_embeddings";

    /// <summary>
    /// save_pretrained: writes adapter_config.json + adapter_model.safetensors for each adapter (or only
    /// <paramref name="adapterName"/>); "default" goes to <paramref name="dir"/>, any other adapter to dir/NAME.
    /// </summary>
    public void SaveAdapter(string dir, string? adapterName = null)
    {
        var names = adapterName is null ? _order.ToList() : new List<string> { adapterName };
        foreach (var n in names) RequireAdapter(n);
        if (!names.Contains("default"))
        {
            foreach (var n in names) SaveAdapterTo(Path.Combine(dir, n), n);
            return;
        }
        // One folder swap for all of them; other subfolders (adapters not saved now, checkpoints) are kept.
        AtomicFolder.Write(dir, tmp =>
        {
            foreach (var n in names) WriteAdapterFiles(n == "default" ? tmp : Path.Combine(tmp, n), n);
        }, keep: entry => Directory.Exists(Path.Combine(dir, entry)));
    }

    /// <summary>Writes one adapter straight into <paramref name="dir"/> (no subfolder rule), replacing its files as a whole; subfolders are kept.</summary>
    public void SaveAdapterTo(string dir, string adapterName)
    {
        RequireAdapter(adapterName);
        AtomicFolder.Write(dir, tmp => WriteAdapterFiles(tmp, adapterName), keep: entry => Directory.Exists(Path.Combine(dir, entry)));
    }

    void WriteAdapterFiles(string dir, string adapterName)
    {
        Directory.CreateDirectory(dir);
        if (PeftMethods.For(_configs[adapterName]) is IAdapterFolderFormat format) { format.SaveWeights(this, dir, adapterName); return; }
        var config = ConfigForSave(adapterName);
        SafetensorsWriter.Save(Path.Combine(dir, AdapterFiles.WeightsFile), AdapterStateDict(adapterName), new Dictionary<string, string> { ["format"] = "pt" });
        config.Save(dir);
    }

    PeftConfig ConfigForSave(string adapterName)
    {
        var c = _configs[adapterName];
        if (c.BaseModelNameOrPath is null && BaseModelPath is not null) c = c with { BaseModelNameOrPath = BaseModelPath };
        if (c.TaskType is null && c.AutoMapping is null)
        {
            var type = Model.Config.ModelType;
            var cls = Model.Config.Architectures?.FirstOrDefault() ?? Model.GetType().Name;
            c = c with { AutoMapping = new System.Text.Json.Nodes.JsonObject { ["base_model_class"] = cls, ["parent_library"] = $"transformers.models.{type}.modeling_{type}" } };
        }
        return c;
    }

    /// <summary>get_peft_model_state_dict: checkpoint key → tensor for one adapter, in peft 0.20's key naming.</summary>
    public Dictionary<string, Tensor> AdapterStateDict(string adapterName)
    {
        RequireAdapter(adapterName);
        var config = _configs[adapterName];
        var result = new Dictionary<string, Tensor>();
        var layers = AdapterLayers().ToList();
        // peft saves a prompt-learning model's modules_to_save under base_model.<module> (its task model wraps the user model directly).
        var prefix = config is PromptLearning.PromptLearningConfig ? PromptKeyPrefix : KeyPrefix;
        foreach (var (name, layer) in layers)
            foreach (var (key, value) in layer.AdapterState(adapterName))
                result[prefix + name + "." + key] = value;
        if (prompt_encoder.Contains(adapterName))
            result[PromptEmbeddingsKey] = prompt_encoder[adapterName].PromptEmbeddings().to(ScalarType.Float32);
        if (PeftMethods.For(config) is IModelLevelState shared)
            foreach (var (key, value) in shared.ModelState(this, adapterName)) result[key] = value;

        if (config is Lora.LoraConfig lc)
        {
            if (lc.Bias == "all")
            {
                foreach (var (key, value) in Model.state_dict())
                    if (key.Contains("bias", StringComparison.Ordinal) && !IsAdapterInternal(key)) result[KeyPrefix + key] = value;
            }
            if (SavesEmbeddingLayers(lc))
            {
                foreach (var (name, layer) in layers)
                {
                    if (layer is not Lora.LoraLayer || !IsEmbeddingModule(name)) continue;
                    foreach (var (key, value) in layer.BaseLayer.state_dict()) result[KeyPrefix + name + ".base_layer." + key] = value;
                }
            }
        }
        return result;
    }

    // Entries of other adapters' copies and LoRA tensors are never part of the bias set.
    static bool IsAdapterInternal(string key) =>
        key.Contains(".modules_to_save.", StringComparison.Ordinal) || key.Contains(".original_module.", StringComparison.Ordinal) || key.Contains("lora_", StringComparison.Ordinal);

    static readonly string[] EmbeddingLayerNames = { "embed_tokens", "lm_head" };

    // peft's save_embedding_layers="auto": on when an embedding layer name is a target (list element or regex substring).
    static bool SavesEmbeddingLayers(Lora.LoraConfig c) =>
        c.TargetModules is { } t && EmbeddingLayerNames.Any(e => t.IsString ? t.Pattern!.Contains(e, StringComparison.Ordinal) : t.Items!.Contains(e));

    bool IsEmbeddingModule(string name)
    {
        var input = Model.InputEmbeddings;
        var module = ModuleSurgery.Get(Model, name);
        return ReferenceEquals(module, input) || name == "lm_head";
    }

    /// <summary>set_peft_model_state_dict: copies an adapter file into adapter <paramref name="adapterName"/>.</summary>
    public void LoadWeights(string adapterDir, string adapterName)
    {
        RequireAdapter(adapterName);
        if (PeftMethods.For(_configs[adapterName]) is IAdapterFolderFormat format) { format.LoadWeights(this, adapterDir, adapterName); return; }
        var path = Path.Combine(adapterDir, AdapterFiles.WeightsFile);
        if (!File.Exists(path))
        {
            if (File.Exists(Path.Combine(adapterDir, AdapterFiles.PickleWeightsFile)))
                throw new PeftFormatException(adapterDir, $"only {AdapterFiles.PickleWeightsFile} (pickle) found; PeftSharp reads {AdapterFiles.WeightsFile} (convert with peft: save_pretrained(safe_serialization=True))");
            throw new PeftFormatException(adapterDir, $"no {AdapterFiles.WeightsFile} in the adapter folder");
        }
        using var file = SafetensorsFile.Open(path);
        LoadState(file.Keys.ToDictionary(k => k, k => (Func<Tensor>)(() => file.Load(k))), adapterName, path);
    }

    /// <summary>Loads checkpoint-named tensors into an adapter. Missing adapter tensors and unknown keys are errors.</summary>
    public void LoadState(IReadOnlyDictionary<string, Func<Tensor>> tensors, string adapterName, string source = "adapter state")
    {
        RequireAdapter(adapterName);
        var expected = new Dictionary<string, (IAdapterLayer Layer, string Local)>();
        foreach (var (name, layer) in AdapterLayers())
            foreach (var (local, _) in layer.AdapterState(adapterName))
                expected[name + "." + local] = (layer, local);
        var shared = PeftMethods.For(_configs[adapterName]) as IModelLevelState;
        var sharedKeys = shared?.ModelState(this, adapterName).Select(kv => kv.Key).ToList() ?? new List<string>();
        var modelState = Model.state_dict();
        var loaded = new HashSet<string>();
        var unexpected = new List<string>();
        var learner = prompt_encoder.Contains(adapterName) ? prompt_encoder[adapterName] : null;
        if (learner is not null) expected[PromptEmbeddingsKey] = (null!, PromptEmbeddingsKey);
        using (no_grad())
        {
            foreach (var (fileKey, load) in tensors)
            {
                var key = fileKey.StartsWith(KeyPrefix, StringComparison.Ordinal) ? fileKey[KeyPrefix.Length..]
                    : learner is not null && fileKey.StartsWith(PromptKeyPrefix, StringComparison.Ordinal) ? fileKey[PromptKeyPrefix.Length..] : fileKey;
                using var value = load();
                if (learner is not null && key == PromptEmbeddingsKey)
                {
                    learner.LoadPromptEmbeddings(value, source);
                    loaded.Add(key);
                    continue;
                }
                try
                {
                    if (shared is not null && shared.LoadModelState(this, adapterName, fileKey, value)) { loaded.Add(fileKey); continue; }
                    if (expected.TryGetValue(key, out var e) && e.Layer.LoadAdapterState(adapterName, e.Local, value)) { loaded.Add(key); continue; }
                    // Pass-through entries (bias="all", saved embedding layers), and the old "<module>.bias" spelling of lora_only biases.
                    var target = modelState.TryGetValue(key, out var t) ? t
                        : key.EndsWith(".bias", StringComparison.Ordinal) && modelState.TryGetValue(key[..^5] + ".base_layer.bias", out var tb) ? tb : null;
                    if (target is null) { unexpected.Add(fileKey); continue; }
                    if (!target.shape.SequenceEqual(value.shape))
                        throw new PeftFormatException(source, $"'{fileKey}' has shape [{string.Join(", ", value.shape)}], the model has [{string.Join(", ", target.shape)}]");
                    target.copy_(value);
                }
                catch (PeftFormatException e) when (e.FilePath is null)
                {
                    throw new PeftFormatException(source, $"'{fileKey}': {e.Message}");
                }
            }
        }
        var missing = expected.Keys.Where(k => !loaded.Contains(k)).Select(k => KeyPrefix + k).Concat(sharedKeys.Where(k => !loaded.Contains(k))).ToList();
        if (unexpected.Count > 0 || missing.Count > 0)
        {
            var parts = new List<string>();
            if (missing.Count > 0) parts.Add($"missing adapter tensors: {string.Join(", ", missing.Take(8))}{(missing.Count > 8 ? $" (+{missing.Count - 8} more)" : "")}");
            if (unexpected.Count > 0) parts.Add($"keys that fit no module of the model: {string.Join(", ", unexpected.Take(8))}{(unexpected.Count > 8 ? $" (+{unexpected.Count - 8} more)" : "")}");
            throw new PeftFormatException(source, $"adapter weights do not fit its config and the model: {string.Join(" | ", parts)}");
        }
    }

    // ---- accounting ----

    /// <summary>get_nb_trainable_parameters: (trainable, all) over every parameter of the PeftModel.</summary>
    public (long Trainable, long All) TrainableParameterCounts()
    {
        long all = 0, trainable = 0;
        foreach (var p in parameters())
        {
            all += p.numel();
            if (p.requires_grad) trainable += p.numel();
        }
        // peft counts a bnb Params4bit as two parameters per packed byte; here the packed weight is a buffer.
        foreach (var (_, q) in QuantizedModelLoader.QuantizedLayers(this)) all += q.PackedWeight.numel() * 2;
        return (trainable, all);
    }

    /// <summary>The line HF's print_trainable_parameters prints ("trainable params: X || all params: Y || trainable%: Z"), returned for the caller to write (the library never writes to the console).</summary>
    public string PrintTrainableParameters()
    {
        var (t, a) = TrainableParameterCounts();
        return ParameterAccounting.FormatTrainable(t, a);
    }

    /// <summary>Trainable parameters, parameters the merge changes, and the rank of each ΔW (see <see cref="ParameterAccounting"/>).</summary>
    public AdapterParameterReport ParameterReport(string? adapterName = null) => ParameterAccounting.Report(this, adapterName ?? ActiveAdapter);

    // ---- combining ----

    /// <summary>
    /// add_weighted_adapter: a new adapter <paramref name="newName"/> from a weighted combination of adapters of one
    /// method, as that method defines it (LoRA: cat, linear, svd with peft 0.20's quirks, see <see cref="Lora.LoraWeighted"/>).
    /// </summary>
    public void AddWeightedAdapter(IReadOnlyList<string> adapters, IReadOnlyList<double> weights, string newName, string combinationType = "svd", int? svdRank = null)
    {
        if (adapters.Count == 0) throw new PeftSharpException("add_weighted_adapter needs at least one adapter");
        var config = _configs.TryGetValue(adapters[0], out var c) ? c : throw new PeftSharpException($"Adapter {adapters[0]} does not exist");
        if (PeftMethods.For(config) is not IWeightedCombination method)
            throw new PeftSharpException($"adapter '{adapters[0]}' is {config.PeftType}: add_weighted_adapter supports {string.Join(", ", PeftMethods.All.Where(m => m is IWeightedCombination).Select(m => m.PeftType))} adapters");
        method.AddWeighted(this, adapters, weights, newName, combinationType, svdRank);
    }
}
