using System.Text.Json;
using System.Text.Json.Nodes;
using System.Text.Json.Serialization;

namespace PeftSharp.Models;

/// <summary>
/// Fields every Hugging Face <c>config.json</c> has. Architecture configs derive from it and keep HF's
/// JSON names; the raw JSON is kept so a merged model can be saved with every original field.
/// </summary>
public abstract record ModelConfig
{
    [JsonPropertyName("model_type")] public string ModelType { get; init; } = "";
    [JsonPropertyName("architectures")] public string[]? Architectures { get; init; }
    [JsonPropertyName("vocab_size")] public int VocabSize { get; init; }
    [JsonPropertyName("hidden_size")] public virtual int HiddenSize { get; init; }
    [JsonPropertyName("num_hidden_layers")] public virtual int NumHiddenLayers { get; init; }
    [JsonPropertyName("num_attention_heads")] public virtual int NumAttentionHeads { get; init; }
    [JsonPropertyName("tie_word_embeddings")] public bool TieWordEmbeddings { get; init; } = true;
    [JsonPropertyName("pad_token_id")] public int? PadTokenId { get; init; }
    [JsonPropertyName("bos_token_id")] public int? BosTokenId { get; init; }
    [JsonPropertyName("eos_token_id")] public JsonElement? EosTokenIdRaw { get; init; }
    [JsonPropertyName("torch_dtype")] public string? TorchDType { get; init; }
    [JsonPropertyName("dtype")] public string? DType { get; init; }

    /// <summary>The config.json as read (or as it will be written), for round-tripping unknown fields.</summary>
    [JsonIgnore] public JsonObject Raw { get; init; } = new();

    /// <summary>eos_token_id may be an int or a list in HF configs.</summary>
    [JsonIgnore]
    public IReadOnlyList<int> EosTokenIds => EosTokenIdRaw switch
    {
        { ValueKind: JsonValueKind.Number } e => new[] { e.GetInt32() },
        { ValueKind: JsonValueKind.Array } e => e.EnumerateArray().Select(x => x.GetInt32()).ToArray(),
        _ => Array.Empty<int>(),
    };

    /// <summary>Checks values that would otherwise fail deep inside a forward pass.</summary>
    /// <summary>Positions the model was trained for (max_position_embeddings, n_positions or n_ctx); int.MaxValue when none is set.</summary>
    [JsonIgnore]
    public int ContextLength
    {
        get
        {
            foreach (var key in new[] { "max_position_embeddings", "n_positions", "n_ctx" })
                if (Raw[key] is JsonValue v && v.TryGetValue<int>(out var n) && n > 0) return n;
            return int.MaxValue;
        }
    }

    public virtual void Validate(string source)
    {
        RequirePositive(source, "vocab_size", VocabSize);
        RequirePositive(source, "hidden_size", HiddenSize);
        RequirePositive(source, "num_hidden_layers", NumHiddenLayers);
        RequirePositive(source, "num_attention_heads", NumAttentionHeads);
        if (HiddenSize % NumAttentionHeads != 0 && this is not IHasHeadDim)
            throw new PeftConfigException($"{source}: hidden_size {HiddenSize} is not divisible by num_attention_heads {NumAttentionHeads}");
    }

    protected static void RequirePositive(string source, string field, int value)
    {
        if (value <= 0) throw new PeftConfigException($"{source}: '{field}' must be a positive integer (found {value})");
    }

    internal static readonly JsonSerializerOptions Json = new()
    {
        NumberHandling = JsonNumberHandling.AllowReadingFromString | JsonNumberHandling.AllowNamedFloatingPointLiterals,
        WriteIndented = true,
    };
}

/// <summary>Configs whose head dimension may differ from hidden_size / heads.</summary>
public interface IHasHeadDim
{
    int HeadDim { get; }
}
