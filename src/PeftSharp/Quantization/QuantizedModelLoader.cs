using System.Text.Json.Nodes;
using PeftSharp.IO;
using PeftSharp.Models;
using PeftSharp.Runtime;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace PeftSharp.Quantization;

/// <summary>
/// Turns the linear layers of a <see cref="PreTrainedModel"/> into <see cref="Linear4bit"/>, the way transformers'
/// bitsandbytes integration does: every <c>nn.Linear</c> except the skipped ones (default <c>lm_head</c>) is
/// quantized on load, or, for a checkpoint saved 4-bit, rebuilt from its stored codes and quant states.
/// Saving such a model (<see cref="AutoModel.SavePretrained"/>) writes transformers' 4-bit layout.
/// </summary>
public static class QuantizedModelLoader
{
    /// <summary>The <c>quantization_config</c> of a model's config.json, or null when the model is not quantized.</summary>
    public static BitsAndBytesConfig? StoredConfig(ModelConfig config, string source = "config.json")
    {
        if (config.Raw["quantization_config"] is not JsonNode node) return null;
        var q = BitsAndBytesConfig.FromJson(node, source);
        q.Validate($"{source}: quantization_config");
        return q;
    }

    /// <summary>Quantizes every targeted linear layer of a loaded model in place and records the config; returns the module names.</summary>
    public static IReadOnlyList<string> Quantize(PreTrainedModel model, BitsAndBytesConfig config)
    {
        config.Validate();
        var names = new List<string>();
        var targets = Targets(model, config).ToList();
        using var progress = PeftProgress.Begin($"quantizing to {config.Bnb4bitQuantType}", targets.Count, "layers");
        foreach (var (name, linear) in targets)
        {
            Linear4bit q;
            using (no_grad())
                q = Linear4bit.Quantize(linear.weight!, linear.bias, config.QuantType, config.Bnb4bitUseDoubleQuant, config.Blocksize, config.ComputeDType);
            ModuleSurgery.Replace(model, name, q);
            linear.Dispose();
            names.Add(name);
            progress.Report(names.Count, name);
        }
        Record(model.Config, config);
        TorchRuntime.TrimMemory();
        return names;
    }

    /// <summary>
    /// Before <see cref="WeightLoader"/> fills a model from a 4-bit checkpoint: each linear layer whose stored weight is packed
    /// becomes an empty <see cref="Linear4bit"/> shaped after the file (the quant state JSON is read here), so the loader copies
    /// every tensor once and reports missing or unexpected keys as usual.
    /// </summary>
    public static IReadOnlyList<string> PrepareForCheckpoint(PreTrainedModel model, Checkpoint checkpoint, BitsAndBytesConfig config)
    {
        var names = new List<string>();
        foreach (var (name, linear) in Linears(model))
        {
            var key = name + ".weight";
            if (!checkpoint.Contains(key) || checkpoint.Entry(key).ScalarType != ScalarType.Byte) continue;
            var device = linear.weight!.device;
            var where = $"{checkpoint.Directory}: {key}";
            var state = QuantState.FromStored(where, suffix =>
            {
                var k = $"{key}.{suffix}";
                if (!checkpoint.Contains(k)) return null;
                if (suffix.StartsWith("quant_state.", StringComparison.Ordinal)) return checkpoint.Load(k);
                var e = checkpoint.Entry(k);
                return torch.empty(e.Shape, e.ScalarType, device);
            });
            var expectedShape = new[] { linear.weight.shape[0], linear.weight.shape[1] };
            if (!state.Shape.SequenceEqual(expectedShape))
                throw new PeftFormatException(checkpoint.Directory, $"{key}: quant_state shape [{string.Join(", ", state.Shape)}] does not match the model's [{string.Join(", ", expectedShape)}]");
            var packedEntry = checkpoint.Entry(key);
            if (packedEntry.NumElements != (state.NumElements + 1) / 2)
                throw new PeftFormatException(checkpoint.Directory, $"{key}: {packedEntry.NumElements} packed bytes, expected {(state.NumElements + 1) / 2} for shape [{string.Join(", ", state.Shape)}]");
            var q = new Linear4bit(torch.empty(packedEntry.Shape, ScalarType.Byte, device), state, linear.bias, config.ComputeDType);
            ModuleSurgery.Replace(model, name, q);
            linear.Dispose();
            names.Add(name);
        }
        if (names.Count == 0)
            throw new PeftFormatException(checkpoint.Directory, "config.json has a 4-bit quantization_config but no tensor in the checkpoint is a packed uint8 weight");
        return names;
    }

    /// <summary>
    /// transformers' <c>model.dequantize()</c>: every 4-bit layer becomes a float <c>Linear</c> in the dtype its weight had
    /// before quantization, and <c>quantization_config</c> leaves the config. Returns the module names.
    /// </summary>
    public static IReadOnlyList<string> Dequantize(PreTrainedModel model)
    {
        var layers = QuantizedLayers(model).ToList();
        foreach (var (name, layer) in layers)
        {
            ModuleSurgery.Replace(model, name, layer.ToLinear());
            layer.Dispose();
        }
        model.Config.Raw.Remove("quantization_config");
        return layers.Select(l => l.Name).ToList();
    }

    /// <summary>
    /// Turns a state dict taken from <paramref name="model"/> into a float one: each 4-bit layer's packed keys
    /// (weight, weight.absmax, ...) become one dequantized <c>weight</c> in its original dtype. The model is not changed.
    /// </summary>
    public static void DequantizeStateDict(nn.Module model, Dictionary<string, Tensor> state)
    {
        foreach (var (name, layer) in QuantizedLayers(model))
        {
            var w = name + ".weight";
            foreach (var k in state.Keys.Where(k => k == w || k.StartsWith(w + ".", StringComparison.Ordinal)).ToList()) state.Remove(k);
            state[w] = layer.Dequantize(layer.OriginalDType);
        }
    }

    /// <summary>The 4-bit layers of a model, by qualified name.</summary>
    public static IEnumerable<(string Name, Linear4bit Layer)> QuantizedLayers(nn.Module model) =>
        model.named_modules().Where(m => m.module is Linear4bit).Select(m => (m.name, (Linear4bit)m.module));

    static List<(string Name, Linear Linear)> Linears(nn.Module model) =>
        model.named_modules().Where(m => m.module is Linear).Select(m => (m.name, (Linear)m.module)).ToList();

    static IEnumerable<(string Name, Linear Linear)> Targets(PreTrainedModel model, BitsAndBytesConfig config) =>
        Linears(model).Where(l => !config.Skips(l.Name));

    /// <summary>Puts <c>quantization_config</c> into the config.json the model will be saved with (keys sorted, as transformers writes them).</summary>
    static void Record(ModelConfig config, BitsAndBytesConfig q)
    {
        var raw = config.Raw;
        raw["quantization_config"] = q.ToJson();
        var sorted = raw.OrderBy(kv => kv.Key, StringComparer.Ordinal).Select(kv => kv.Key).ToList();
        foreach (var k in sorted)
        {
            var v = raw[k];
            raw.Remove(k);
            raw[k] = v;
        }
    }
}
