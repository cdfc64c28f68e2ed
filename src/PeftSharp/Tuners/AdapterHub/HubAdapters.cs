using System.Text.Json;
using System.Text.Json.Nodes;
using PeftSharp.IO;
using TorchSharp;
using PeftSharp.Tuners.Bottleneck;
using static TorchSharp.torch;

namespace PeftSharp.Tuners.AdapterHub;

/// <summary>
/// AdapterHub operations beyond one active adapter: compositions (set_active_adapters(Stack/Fuse)), AdapterFusion
/// layers (add/load/save, the fusion-only training stage) and AdapterDrop.
/// </summary>
public static class HubAdapters
{
    public const string FusionConfigFile = "adapter_fusion_config.json";
    public const string FusionWeightsFile = "model_adapter_fusion.safetensors";
    public const string FusionPickleFile = "pytorch_model_adapter_fusion.bin";

    static IEnumerable<AdapterSlot> Slots(PeftModel peft) => peft.AdapterLayers().Select(l => l.Layer).OfType<AdapterSlot>();

    /// <summary>set_active_adapters: every slot runs <paramref name="setup"/>; LoRA layers apply every adapter named in it.</summary>
    public static void Activate(PeftModel peft, Composition setup)
    {
        foreach (var n in setup.Flatten())
            if (!peft.Configs.ContainsKey(n)) throw new PeftSharpException($"adapter '{n}' in {setup} does not exist (adapters: {string.Join(", ", peft.Adapters)})");
        if (HasBlock(setup, Composition.Kind.Parallel) || HasBlock(setup, Composition.Kind.Average))
            foreach (var n in setup.Flatten())
                if (peft.Configs[n] is not AdapterHubConfig { Parts: var parts } || parts.Any(p => p is not BottleneckConfig))
                    throw new PeftSharpException($"{setup}: Parallel and Average compose bottleneck adapters in PeftSharp; '{n}' is {(peft.Configs[n] is AdapterHubConfig h ? h.Describe() : peft.Configs[n].PeftType)}");
        foreach (var (_, layer) in peft.AdapterLayers())
        {
            if (layer is AdapterSlot s) s.Setup = setup;
            else layer.SetActiveAdapters(setup.Flatten().ToList());
        }
    }

    static bool HasBlock(Composition c, Composition.Kind kind) => c.Type == kind || c.Children.Any(k => HasBlock(k, kind));

    /// <summary>add_adapter_fusion: a fusion layer in every slot that holds all of <paramref name="adapters"/>.</summary>
    public static void AddFusion(PeftModel peft, IReadOnlyList<string> adapters, FusionConfig? config = null)
    {
        config ??= FusionConfig.Dynamic();
        var name = string.Join(",", adapters);
        var dropout = peft.Model.Config.Raw["attention_probs_dropout_prob"] is JsonValue v && v.GetValueKind() == JsonValueKind.Number ? v.GetValue<double>() : 0;
        int added = 0;
        foreach (var s in Slots(peft))
        {
            if (!adapters.All(s.Adapters.Contains)) continue;
            var f = new FusionLayer(config, peft.Model.Config.HiddenSize, dropout);
            f.to(peft.Model.DType).to(peft.Model.Device);
            f.train(peft.Model.training);
            s.AddFusion(name, f);
            added++;
        }
        if (added == 0) throw new PeftSharpException($"no layer holds all of the adapters {name}; nothing to fuse");
    }

    /// <summary>The second stage of AdapterFusion: adapters frozen, only the fusion layers trainable; the model runs Fuse(adapters).</summary>
    public static void TrainFusion(PeftModel peft, IReadOnlyList<string> adapters)
    {
        var name = string.Join(",", adapters);
        foreach (var (_, layer) in peft.AdapterLayers())
            foreach (var a in layer.Adapters) layer.SetTrainable(a, false);
        foreach (var s in Slots(peft))
            if (s.FusionNames.Contains(name)) foreach (var p in s.Fusion(name).parameters()) p.requires_grad = true;
        Activate(peft, Composition.Fuse(adapters.ToArray()));
    }

    /// <summary>Sum of the fusion layers' value regularization (AdapterHub adds it to the loss when training fusion).</summary>
    public static Tensor? FusionRegularization(PeftModel peft, IReadOnlyList<string> adapters)
    {
        var name = string.Join(",", adapters);
        Tensor? total = null;
        foreach (var s in Slots(peft))
            if (s.FusionNames.Contains(name) && s.Fusion(name).RegularizationLoss() is { } l) total = total is null ? l : total + l;
        return total;
    }

    static Dictionary<string, (FusionLayer Layer, string Local)> FusionKeys(PeftModel peft, string name)
    {
        var result = new Dictionary<string, (FusionLayer, string)>();
        foreach (var (path, layer) in peft.AdapterLayers())
        {
            if (layer is not AdapterSlot s || !s.FusionNames.Contains(name)) continue;
            var owner = s.KeysInParent ? path[..Math.Max(0, path.LastIndexOf('.'))] : path;
            var f = s.Fusion(name);
            foreach (var (local, _) in f.named_parameters()) result[$"{owner}.adapter_fusion_layer.{name}.{local}"] = (f, local);
        }
        return result;
    }

    /// <summary>load_adapter_fusion: reads adapter_fusion_config.json + model_adapter_fusion.safetensors (the adapters must be loaded).</summary>
    public static IReadOnlyList<string> LoadFusion(PeftModel peft, string dir)
    {
        var configPath = Path.Combine(dir, FusionConfigFile);
        if (!File.Exists(configPath)) throw new PeftFormatException(dir, $"no {FusionConfigFile} in the fusion folder");
        JsonObject json;
        try { json = JsonNode.Parse(File.ReadAllText(configPath)) as JsonObject ?? throw new PeftFormatException(configPath, "must be a JSON object"); }
        catch (JsonException e) { throw new PeftFormatException(configPath, $"not valid JSON ({e.Message})"); }
        var r = new ConfigReader(json, configPath);
        var names = r.StringOrList("adapter_names")?.Items ?? r.String("name")?.Split(',') ?? throw new PeftFormatException(configPath, "no 'adapter_names'");
        var config = FusionConfig.Parse(new ConfigReader(r.Node("config") as JsonObject ?? new JsonObject(), configPath + ": config"));
        r.Accept("hidden_size", "model_class", "model_name", "model_type", "name", "version");
        foreach (var n in names)
            if (!peft.Configs.ContainsKey(n)) throw new PeftFormatException(configPath, $"fusion over '{string.Join(",", names)}' needs adapter '{n}', which is not loaded (adapters: {string.Join(", ", peft.Adapters)})");
        AddFusion(peft, names, config);
        var path = AdapterHubMethod.RequireSafetensors(dir, FusionWeightsFile, FusionPickleFile, "model.save_adapter_fusion(dir, names, use_safetensors=True)");
        using var file = SafetensorsFile.Open(path);
        AdapterHubMethod.LoadInto(file, FusionKeys(peft, string.Join(",", names)), path, (f, k, v) => HubTensors.CopyInto(f, k, v));
        return names.ToList();
    }

    /// <summary>save_adapter_fusion: AdapterHub's fusion folder.</summary>
    public static void SaveFusion(PeftModel peft, string dir, IReadOnlyList<string> adapters)
    {
        var name = string.Join(",", adapters);
        var keys = FusionKeys(peft, name);
        if (keys.Count == 0) throw new PeftSharpException($"no fusion layer '{name}' to save");
        var config = Slots(peft).First(s => s.FusionNames.Contains(name)).Fusion(name).Config;
        Directory.CreateDirectory(dir);
        SafetensorsWriter.Save(Path.Combine(dir, FusionWeightsFile), keys.ToDictionary(kv => kv.Key, kv => (Tensor)kv.Value.Layer.named_parameters().First(p => p.name == kv.Value.Local).parameter), new Dictionary<string, string> { ["format"] = "pt" });
        var model = peft.Model;
        var o = new JsonObject
        {
            ["adapter_names"] = new JsonArray(adapters.Select(a => (JsonNode?)a).ToArray()),
            ["config"] = config.ToJson(),
            ["hidden_size"] = model.Config.HiddenSize,
            ["model_class"] = model.Config.Architectures?.FirstOrDefault() ?? model.GetType().Name,
            ["model_name"] = peft.BaseModelPath,
            ["model_type"] = model.Config.ModelType,
            ["name"] = name,
            ["version"] = "adapters.1.2.0",
        };
        AtomicFile.WriteAllText(Path.Combine(dir, FusionConfigFile), o.ToJsonString(new JsonSerializerOptions { WriteIndented = true }) + "\n");
    }

    /// <summary>AdapterDrop at run time: the adapters in blocks <paramref name="layers"/> are skipped (empty = none skipped).</summary>
    public static void DropLayers(PeftModel peft, IEnumerable<int> layers)
    {
        var set = layers.ToHashSet();
        foreach (var s in Slots(peft)) s.SetDropped(set.Contains(s.Layer) ? s.Adapters : Array.Empty<string>());
    }

    /// <summary>
    /// Robust AdapterDrop for one training step: drops the adapters of the first n blocks, n uniform in
    /// [0, <paramref name="maxLayers"/>]. Returns n. Call <see cref="DropLayers"/> with nothing to stop dropping.
    /// </summary>
    public static int RandomDrop(PeftModel peft, Random rng, int maxLayers)
    {
        int n = rng.Next(0, maxLayers + 1);
        DropLayers(peft, Enumerable.Range(0, n));
        return n;
    }
}

/// <summary>
/// Robust AdapterDrop training (AdapterHub's AdapterDropTrainerCallback; YAML <c>robust_adapter_drop</c>): before each
/// optimizer step the adapters of the first n blocks are skipped, n uniform in [0, <see cref="MaxLayers"/>]; after it
/// nothing is skipped, so evaluation and the saved adapter see every layer. n is a function of (seed, step), so a
/// resumed run drops the same layers.
/// </summary>
public sealed class RobustAdapterDrop : ITrainingCallback
{
    readonly PeftModel _peft;
    readonly int _seed;

    public RobustAdapterDrop(PeftModel peft, int maxLayers, int seed)
    {
        int layers = peft.Model.Config.NumHiddenLayers;
        if (maxLayers < 0 || maxLayers > layers) throw new PeftConfigException($"robust_adapter_drop: at most {layers} layers (the model's) can be dropped; got {maxLayers}");
        _peft = peft; MaxLayers = maxLayers; _seed = seed;
    }

    public int MaxLayers { get; }

    /// <summary>Blocks skipped in the current step (0 between steps).</summary>
    public int Dropped { get; private set; }

    public void OnStepBegin(int globalStep) => Dropped = HubAdapters.RandomDrop(_peft, new Random(unchecked(_seed * 1_000_003 + globalStep)), MaxLayers);

    public void OnStepEnd(int globalStep)
    {
        HubAdapters.DropLayers(_peft, Array.Empty<int>());
        Dropped = 0;
    }
}
