using System.Text.Json;
using System.Text.Json.Nodes;
using PeftSharp.IO;
using PeftSharp.Quantization;
using PeftSharp.Runtime;
using TorchSharp;
using static TorchSharp.torch;

namespace PeftSharp.Models;

/// <summary>Reads a Hugging Face model folder (config.json + safetensors) into the matching architecture.</summary>
public static class AutoModel
{
    /// <summary>A model_type: its config record, how a config builds it, and the transformers class built for each peft task_type.</summary>
    sealed record Architecture(Type ConfigType, Func<ModelConfig, PreTrainedModel> Create, IReadOnlyDictionary<string, string> Tasks);

    static Dictionary<string, string> CausalLM(string className) => new() { ["CAUSAL_LM"] = className };

    // One line per supported model_type.
    static readonly Dictionary<string, Architecture> Registry = new()
    {
        ["llama"] = new(typeof(LlamaConfig), c => new LlamaForCausalLM((LlamaConfig)c), CausalLM("LlamaForCausalLM")),
        ["qwen2"] = new(typeof(LlamaConfig), c => new LlamaForCausalLM((LlamaConfig)c), CausalLM("Qwen2ForCausalLM")),
        ["mistral"] = new(typeof(LlamaConfig), c => new LlamaForCausalLM((LlamaConfig)c), CausalLM("MistralForCausalLM")),
        ["gpt2"] = new(typeof(GPT2Config), c => new GPT2LMHeadModel((GPT2Config)c), CausalLM("GPT2LMHeadModel")),
        ["bert"] = new(typeof(BertConfig), c => c.Architectures?.Contains(nameof(BertForSequenceClassification)) == true ? new BertForSequenceClassification((BertConfig)c) : new BertModel((BertConfig)c),
            new Dictionary<string, string> { ["SEQ_CLS"] = nameof(BertForSequenceClassification), ["FEATURE_EXTRACTION"] = nameof(BertModel) }),
    };

    /// <summary>Where loading warnings go (weights initialized fresh for a new head, ignored weights of another head).</summary>
    public static Action<string> Warn { get; set; } = m => Console.Error.WriteLine($"warning: {m}");

    public static IReadOnlyCollection<string> SupportedModelTypes => Registry.Keys;

    public static ModelConfig LoadConfig(string dir) => LoadConfig(dir, task: null, numLabels: null);

    /// <summary>
    /// config.json of a model folder, adapted as transformers' <c>AutoModelFor&lt;Task&gt;</c> adapts it: a peft
    /// <paramref name="task"/> (CAUSAL_LM, SEQ_CLS, FEATURE_EXTRACTION) names the class to build, and
    /// <paramref name="numLabels"/> (when given) the size of a classification head.
    /// </summary>
    public static ModelConfig LoadConfig(string dir, string? task, int? numLabels)
    {
        dir = HfHubCache.ResolveFolder(dir);
        var path = Path.Combine(dir, "config.json");
        if (!File.Exists(path)) throw new PeftFormatException(dir, "no config.json in the model folder");
        JsonObject raw;
        try { raw = JsonNode.Parse(File.ReadAllText(path)) as JsonObject ?? throw new PeftFormatException(path, "config must be a JSON object"); }
        catch (JsonException e) { throw new PeftFormatException(path, $"not valid JSON ({e.Message})"); }
        if (task is not null) ForTask(raw, task, numLabels, path);
        return ParseConfig(raw, path);
    }

    /// <summary>The transformers class names this library builds for a model_type, by peft task_type.</summary>
    public static IReadOnlyDictionary<string, string> TaskClasses(string modelType) =>
        Registry.TryGetValue(modelType, out var a) ? a.Tasks : new Dictionary<string, string>();

    static void ForTask(JsonObject raw, string task, int? numLabels, string path)
    {
        var type = raw["model_type"] is JsonValue v && v.TryGetValue<string>(out var s) ? s : null;
        if (type is null || !Registry.TryGetValue(type, out var arch)) return; // ParseConfig names the problem
        if (!arch.Tasks.TryGetValue(task, out var className))
            throw new PeftConfigException($"{path}: task_type '{task}' needs a {type} model with that head; for model_type {type} PeftSharp builds {string.Join(", ", arch.Tasks.Select(t => $"{t.Key} ({t.Value})"))}");
        raw["architectures"] = new JsonArray(className);
        if (numLabels is int n && (raw["id2label"] as JsonObject)?.Count != n)
        {
            // transformers' PretrainedConfig(num_labels=n) writes LABEL_i names both ways.
            raw["id2label"] = new JsonObject(Enumerable.Range(0, n).Select(i => KeyValuePair.Create(i.ToString(), (JsonNode?)$"LABEL_{i}")));
            raw["label2id"] = new JsonObject(Enumerable.Range(0, n).Select(i => KeyValuePair.Create($"LABEL_{i}", (JsonNode?)i)));
            raw.Remove("num_labels");
        }
    }

    public static ModelConfig ParseConfig(JsonObject raw, string source = "config.json")
    {
        var type = raw["model_type"]?.GetValue<string>()
            ?? throw new PeftConfigException($"{source}: missing 'model_type' (supported: {string.Join(", ", Registry.Keys)})");
        if (!Registry.TryGetValue(type, out var arch))
            throw new PeftConfigException($"{source}: model_type '{type}' is not supported (supported: {string.Join(", ", Registry.Keys)})");
        ModelConfig config;
        try { config = (ModelConfig)raw.Deserialize(arch.ConfigType, ModelConfig.Json)!; }
        catch (Exception e) when (e is JsonException or InvalidOperationException or FormatException)
        {
            throw new PeftConfigException($"{source}: {e.Message}");
        }
        config = config with { Raw = (JsonObject)raw.DeepClone() };
        config.Validate(source);
        return config;
    }

    /// <summary>Builds a randomly initialized model from a config (tests, pretraining).</summary>
    public static PreTrainedModel FromConfig(ModelConfig config, Device? device = null, ScalarType dtype = ScalarType.Float32)
    {
        TorchRuntime.EnsureInitialized();
        if (!Registry.TryGetValue(config.ModelType, out var arch))
            throw new PeftConfigException($"model_type '{config.ModelType}' is not supported (supported: {string.Join(", ", Registry.Keys)})");
        var model = arch.Create(config);
        model.to(dtype);
        if (device is not null) model.to(device);
        model.eval();
        return model;
    }

    /// <summary>
    /// Loads a model folder. Weights are cast to <paramref name="dtype"/> and placed on <paramref name="device"/>.
    /// A folder saved 4-bit (config.json has a bitsandbytes <c>quantization_config</c>) loads as 4-bit; otherwise
    /// <paramref name="quantization"/> quantizes the linear layers on load, as transformers' <c>quantization_config=</c>.
    /// </summary>
    /// <param name="task">A peft task_type choosing the head as <c>AutoModelFor&lt;Task&gt;</c> (see <see cref="LoadConfig(string, string?, int?)"/>);
    /// null builds the folder's own architecture. A head the checkpoint lacks is initialized fresh, as transformers does.</param>
    /// <param name="numLabels">Labels of a classification head (default: the config's).</param>
    public static PreTrainedModel FromPretrained(string dir, Device? device = null, ScalarType dtype = ScalarType.Float32, BitsAndBytesConfig? quantization = null,
        string? task = null, int? numLabels = null)
    {
        TorchRuntime.EnsureInitialized();
        dir = HfHubCache.ResolveFolder(dir);
        var config = LoadConfig(dir, task, numLabels);
        var stored = QuantizedModelLoader.StoredConfig(config, Path.Combine(dir, "config.json"));
        var model = FromConfig(config, device, dtype);
        using (var checkpoint = Checkpoint.Open(dir))
        {
            if (stored is not null) QuantizedModelLoader.PrepareForCheckpoint(model, checkpoint, stored);
            WeightLoader.Load(model, checkpoint, newHead: task is not null);
        }
        if (stored is null && quantization is not null) QuantizedModelLoader.Quantize(model, quantization);
        TorchRuntime.TrimMemory();
        return model;
    }

    /// <summary>Writes a HF model folder (config.json + model.safetensors) that <see cref="FromPretrained"/> and transformers read.</summary>
    public static void SavePretrained(PreTrainedModel model, string dir)
    {
        Directory.CreateDirectory(dir);
        var tensors = model.state_dict().Where(kv => !model.TiedKeys.Contains(kv.Key));
        SafetensorsWriter.Save(Path.Combine(dir, Checkpoint.SingleFile), tensors, new Dictionary<string, string> { ["format"] = "pt" });
        AtomicFile.WriteAllText(Path.Combine(dir, "config.json"), model.Config.Raw.ToJsonString(ModelConfig.Json));
    }
}
