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
    sealed record Architecture(Type ConfigType, Func<ModelConfig, PreTrainedModel> Create);

    // One line per supported model_type.
    static readonly Dictionary<string, Architecture> Registry = new()
    {
        ["llama"] = new(typeof(LlamaConfig), c => new LlamaForCausalLM((LlamaConfig)c)),
        ["qwen2"] = new(typeof(LlamaConfig), c => new LlamaForCausalLM((LlamaConfig)c)),
        ["mistral"] = new(typeof(LlamaConfig), c => new LlamaForCausalLM((LlamaConfig)c)),
        ["gpt2"] = new(typeof(GPT2Config), c => new GPT2LMHeadModel((GPT2Config)c)),
        ["bert"] = new(typeof(BertConfig), c => c.Architectures?.Contains(nameof(BertForSequenceClassification)) == true ? new BertForSequenceClassification((BertConfig)c) : new BertModel((BertConfig)c)),
    };

    public static IReadOnlyCollection<string> SupportedModelTypes => Registry.Keys;

    public static ModelConfig LoadConfig(string dir)
    {
        dir = HfHubCache.ResolveFolder(dir);
        var path = Path.Combine(dir, "config.json");
        if (!Directory.Exists(dir)) throw new PeftFormatException(dir, "model folder not found");
        if (!File.Exists(path)) throw new PeftFormatException(dir, "no config.json in the model folder");
        JsonObject raw;
        try { raw = JsonNode.Parse(File.ReadAllText(path)) as JsonObject ?? throw new PeftFormatException(path, "config must be a JSON object"); }
        catch (JsonException e) { throw new PeftFormatException(path, $"not valid JSON ({e.Message})"); }
        return ParseConfig(raw, path);
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
    public static PreTrainedModel FromPretrained(string dir, Device? device = null, ScalarType dtype = ScalarType.Float32, BitsAndBytesConfig? quantization = null)
    {
        TorchRuntime.EnsureInitialized();
        dir = HfHubCache.ResolveFolder(dir);
        var config = LoadConfig(dir);
        var stored = QuantizedModelLoader.StoredConfig(config, Path.Combine(dir, "config.json"));
        var model = FromConfig(config, device, dtype);
        using (var checkpoint = Checkpoint.Open(dir))
        {
            if (stored is not null) QuantizedModelLoader.PrepareForCheckpoint(model, checkpoint, stored);
            WeightLoader.Load(model, checkpoint);
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
