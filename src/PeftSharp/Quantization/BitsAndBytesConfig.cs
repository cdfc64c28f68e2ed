using System.Text.Json;
using System.Text.Json.Nodes;
using System.Text.Json.Serialization;
using static TorchSharp.torch;

namespace PeftSharp.Quantization;

/// <summary>
/// transformers' <c>BitsAndBytesConfig</c> (the <c>quantization_config</c> of config.json), with its names and
/// library defaults: fp4, no double quantization, float32 compute. Only 4-bit loading is implemented.
/// </summary>
public sealed record BitsAndBytesConfig
{
    [JsonPropertyName("quant_method")] public string QuantMethod { get; init; } = "bitsandbytes";
    [JsonPropertyName("load_in_4bit")] public bool LoadIn4bit { get; init; }
    [JsonPropertyName("load_in_8bit")] public bool LoadIn8bit { get; init; }
    [JsonPropertyName("bnb_4bit_quant_type")] public string Bnb4bitQuantType { get; init; } = "fp4";
    [JsonPropertyName("bnb_4bit_use_double_quant")] public bool Bnb4bitUseDoubleQuant { get; init; }
    [JsonPropertyName("bnb_4bit_compute_dtype")] public string? Bnb4bitComputeDType { get; init; }
    [JsonPropertyName("bnb_4bit_quant_storage")] public string? Bnb4bitQuantStorage { get; init; }
    /// <summary>Modules kept in full precision; null means transformers' default, the output layer (<c>lm_head</c>).</summary>
    [JsonPropertyName("llm_int8_skip_modules")] public string[]? LlmInt8SkipModules { get; init; }
    [JsonPropertyName("llm_int8_threshold")] public double LlmInt8Threshold { get; init; } = 6.0;
    [JsonPropertyName("llm_int8_enable_fp32_cpu_offload")] public bool LlmInt8EnableFp32CpuOffload { get; init; }
    [JsonPropertyName("llm_int8_has_fp16_weight")] public bool LlmInt8HasFp16Weight { get; init; }

    /// <summary>bitsandbytes' block size. Not a transformers field (it always uses 64); saved files carry it in each quant_state.</summary>
    [JsonIgnore] public int Blocksize { get; init; } = 64;

    public static readonly string[] DefaultSkipModules = { "lm_head" };

    [JsonIgnore] public QuantType QuantType => QuantTypes.Parse(Bnb4bitQuantType, "bnb_4bit_quant_type");
    [JsonIgnore] public ScalarType ComputeDType => Bnb4bit.ParseDType(Bnb4bitComputeDType ?? "float32", "bnb_4bit_compute_dtype");

    /// <summary>The usual QLoRA setting: NF4 with double quantization.</summary>
    public static BitsAndBytesConfig NF4(bool doubleQuant = true, string computeDType = "float32") =>
        new() { LoadIn4bit = true, Bnb4bitQuantType = "nf4", Bnb4bitUseDoubleQuant = doubleQuant, Bnb4bitComputeDType = computeDType };

    /// <summary>
    /// LLaMA-Factory's model arguments: <c>quantization_bit</c> (null: no quantization; only 4 is supported),
    /// <c>quantization_type</c> (nf4 | fp4, default nf4), <c>double_quantization</c> (default true), and the compute
    /// dtype it takes from the run's precision (bf16 → bfloat16, else float32). <paramref name="source"/> names the file in errors.
    /// </summary>
    public static BitsAndBytesConfig? FromLlamaFactory(int? quantizationBit, string quantizationType = "nf4", bool doubleQuantization = true, string computeDType = "float32", string source = "config")
    {
        if (quantizationBit is null) return null;
        if (quantizationBit != 4)
            throw new PeftConfigException($"{source}: quantization_bit {quantizationBit} is not supported (expected 4: bitsandbytes NF4/FP4; 8-bit LLM.int8 is not implemented)");
        var c = new BitsAndBytesConfig
        {
            LoadIn4bit = true,
            Bnb4bitQuantType = quantizationType is "nf4" or "fp4" ? quantizationType : throw new PeftConfigException($"{source}: quantization_type '{quantizationType}' is not supported (expected nf4 or fp4)"),
            Bnb4bitUseDoubleQuant = doubleQuantization,
            Bnb4bitComputeDType = computeDType,
        };
        c.Validate(source);
        return c;
    }

    public void Validate(string source = "quantization_config")
    {
        if (QuantMethod != "bitsandbytes")
            throw new PeftConfigException($"{source}: quant_method '{QuantMethod}' is not supported (expected bitsandbytes)");
        if (LoadIn8bit) throw new PeftConfigException($"{source}: load_in_8bit is not supported (only 4-bit bitsandbytes weights)");
        if (!LoadIn4bit) throw new PeftConfigException($"{source}: load_in_4bit must be true");
        _ = QuantType;
        _ = ComputeDType;
        if ((Bnb4bitQuantStorage ?? "uint8") != "uint8")
            throw new PeftConfigException($"{source}: bnb_4bit_quant_storage '{Bnb4bitQuantStorage}' is not supported (expected uint8)");
        if (Array.IndexOf(Blockwise.Valid4bitBlockSizes, Blocksize) < 0)
            throw new PeftConfigException($"{source}: blocksize {Blocksize} is not supported (expected one of {string.Join(", ", Blockwise.Valid4bitBlockSizes)})");
    }

    /// <summary>transformers' skip rule: a module is kept when its own name is listed, or a listed key is its full name or a dotted part of it.</summary>
    public bool Skips(string qualifiedName)
    {
        var shortName = qualifiedName[(qualifiedName.LastIndexOf('.') + 1)..];
        return (LlmInt8SkipModules ?? DefaultSkipModules).Any(k => k == shortName || k == qualifiedName || qualifiedName.Contains(k + ".", StringComparison.Ordinal));
    }

    public static BitsAndBytesConfig FromJson(JsonNode node, string source)
    {
        try
        {
            var c = node.Deserialize<BitsAndBytesConfig>(Json) ?? throw new PeftConfigException($"{source}: quantization_config is null");
            // transformers also writes private mirrors _load_in_4bit/_load_in_8bit; the public keys win.
            if (node is JsonObject o && !o.ContainsKey("load_in_4bit") && o["_load_in_4bit"] is JsonValue v && v.TryGetValue<bool>(out var b))
                c = c with { LoadIn4bit = b };
            return c;
        }
        catch (JsonException e) { throw new PeftConfigException($"{source}: quantization_config: {e.Message}"); }
    }

    /// <summary>The object transformers writes into config.json (its to_dict, keys sorted).</summary>
    public JsonObject ToJson()
    {
        var o = new JsonObject
        {
            ["_load_in_4bit"] = LoadIn4bit,
            ["_load_in_8bit"] = LoadIn8bit,
            ["bnb_4bit_compute_dtype"] = Bnb4bitComputeDType ?? "float32",
            ["bnb_4bit_quant_storage"] = Bnb4bitQuantStorage ?? "uint8",
            ["bnb_4bit_quant_type"] = Bnb4bitQuantType,
            ["bnb_4bit_use_double_quant"] = Bnb4bitUseDoubleQuant,
            ["llm_int8_enable_fp32_cpu_offload"] = LlmInt8EnableFp32CpuOffload,
            ["llm_int8_has_fp16_weight"] = LlmInt8HasFp16Weight,
            ["llm_int8_skip_modules"] = LlmInt8SkipModules is null ? null : new JsonArray(LlmInt8SkipModules.Select(s => (JsonNode?)s).ToArray()),
            // decimal keeps Python's "6.0" (a double would print "6").
            ["llm_int8_threshold"] = LlmInt8Threshold % 1 == 0 ? JsonValue.Create((decimal)LlmInt8Threshold + 0.0m) : JsonValue.Create(LlmInt8Threshold),
            ["load_in_4bit"] = LoadIn4bit,
            ["load_in_8bit"] = LoadIn8bit,
            ["quant_method"] = QuantMethod,
        };
        return o;
    }

    static readonly JsonSerializerOptions Json = new()
    {
        NumberHandling = JsonNumberHandling.AllowReadingFromString,
    };
}
