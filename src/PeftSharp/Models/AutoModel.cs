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
        var typeNode = raw["model_type"];
        if (typeNode is not JsonValue tv || tv.GetValueKind() != JsonValueKind.String)
            throw new PeftConfigException(typeNode is null
                ? $"{source}: missing 'model_type' (supported: {string.Join(", ", Registry.Keys)})"
                : $"{source}: 'model_type' must be a string such as \"llama\" (found {typeNode.ToJsonString()})");
        var type = tv.GetValue<string>();
        if (!Registry.TryGetValue(type, out var arch))
            throw new PeftConfigException($"{source}: model_type '{type}' is not supported (supported: {string.Join(", ", Registry.Keys)})");
        ModelConfig config;
        try { config = (ModelConfig)raw.Deserialize(arch.ConfigType, ModelConfig.Json)!; }
        catch (JsonException e) when (e.Path is { Length: > 2 } jsonPath && jsonPath.StartsWith("$.", StringComparison.Ordinal))
        {
            // Name the key and show what was found instead of the serializer's CLR type names.
            var key = jsonPath[2..];
            var found = raw[key.Split('.', '[')[0]]?.ToJsonString() ?? "null";
            throw new PeftConfigException($"{source}: '{key}' has the wrong type or is out of range (found {found}; {ExpectedKind(arch.ConfigType, key)})", e);
        }
        catch (Exception e) when (e is JsonException or InvalidOperationException or FormatException)
        {
            throw new PeftConfigException($"{source}: {e.Message}", e);
        }
        config = config with { Raw = (JsonObject)raw.DeepClone() };
        config.Validate(source);
        return config;
    }

    static string ExpectedKind(Type configType, string key)
    {
        var prop = configType.GetProperties().FirstOrDefault(p =>
            p.GetCustomAttributes(typeof(System.Text.Json.Serialization.JsonPropertyNameAttribute), true)
             .Cast<System.Text.Json.Serialization.JsonPropertyNameAttribute>().Any(a => a.Name == key));
        var t = prop is null ? null : Nullable.GetUnderlyingType(prop.PropertyType) ?? prop.PropertyType;
        return t switch
        {
            null => "see the model's documentation",
            _ when t == typeof(int) || t == typeof(long) => "expected an integer in 32-bit range",
            _ when t == typeof(double) || t == typeof(float) => "expected a number",
            _ when t == typeof(bool) => "expected true or false",
            _ when t == typeof(string) => "expected a string",
            _ when t.IsArray => "expected a list",
            _ => $"expected {t.Name}",
        };
    }

    /// <summary>
    /// Refuses a config that describes far more parameters than the checkpoint holds (e.g. num_hidden_layers: 1000000000)
    /// before anything is allocated from it. 4-bit checkpoints pack two values per stored byte, hence the factor 2.
    /// </summary>
    public static void CheckAgainstCheckpoint(ModelConfig config, Checkpoint checkpoint, string source)
    {
        long stored = 0;
        foreach (var key in checkpoint.Keys) stored += checkpoint.Entry(key).NumElements;
        long needed = config.MinParameterCount(source);
        if (needed / 2 > stored)
            throw new PeftConfigException($"{source}: the config describes at least {needed:N0} parameters (num_hidden_layers {config.NumHiddenLayers}, " +
                $"hidden_size {config.HiddenSize}, vocab_size {config.VocabSize}) but the checkpoint in {checkpoint.Directory} holds only {stored:N0} values");
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
        PreTrainedModel model;
        using (var checkpoint = Checkpoint.Open(dir))
        {
            CheckAgainstCheckpoint(config, checkpoint, Path.Combine(dir, "config.json"));
            model = FromConfig(config, device, dtype);
            if (stored is not null) QuantizedModelLoader.PrepareForCheckpoint(model, checkpoint, stored);
            WeightLoader.Load(model, checkpoint, newHead: task is not null);
        }
        if (stored is null && quantization is not null) QuantizedModelLoader.Quantize(model, quantization);
        TorchRuntime.TrimMemory();
        return model;
    }

    /// <summary>
    /// Writes a HF model folder (config.json + model.safetensors) that <see cref="FromPretrained"/> and transformers read.
    /// The folder is replaced as a whole (<see cref="AtomicFolder"/>); <paramref name="alsoWrite"/> adds files (tokenizer, ...)
    /// to the new folder before it is swapped in.
    /// </summary>
    public static void SavePretrained(PreTrainedModel model, string dir, Action<string>? alsoWrite = null) => AtomicFolder.Write(dir, tmp =>
    {
        var tensors = model.state_dict().Where(kv => !model.TiedKeys.Contains(kv.Key));
        SafetensorsWriter.Save(Path.Combine(tmp, Checkpoint.SingleFile), tensors, new Dictionary<string, string> { ["format"] = "pt" });
        AtomicFile.WriteAllText(Path.Combine(tmp, "config.json"), model.Config.Raw.ToJsonString(ModelConfig.Json));
        alsoWrite?.Invoke(tmp);
    });
}
