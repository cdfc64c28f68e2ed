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

    /// <summary>Generous upper bounds: far above any released model, low enough that a typo cannot allocate without end.</summary>
    public const int MaxVocabSize = 1 << 24, MaxHiddenSize = 1 << 17, MaxLayers = 4096, MaxHeads = 1 << 12, MaxIntermediateSize = 1 << 20,
        MaxPositions = 1 << 24;

    /// <summary>Checks every value before anything is allocated from it: types, ranges, divisibility.</summary>
    public virtual void Validate(string source)
    {
        RequireRange(source, "vocab_size", VocabSize, MaxVocabSize);
        RequireRange(source, "hidden_size", HiddenSize, MaxHiddenSize);
        RequireRange(source, "num_hidden_layers", NumHiddenLayers, MaxLayers);
        RequireRange(source, "num_attention_heads", NumAttentionHeads, MaxHeads);
        if (HiddenSize % NumAttentionHeads != 0 && this is not IHasHeadDim)
            throw new PeftConfigException($"{source}: hidden_size {HiddenSize} is not divisible by num_attention_heads {NumAttentionHeads}");
        if (EosTokenIdRaw is { } eos && !(eos.ValueKind is JsonValueKind.Null || IsInt(eos) || eos.ValueKind == JsonValueKind.Array && eos.EnumerateArray().All(IsInt)))
            throw new PeftConfigException($"{source}: 'eos_token_id' must be an integer or a list of integers (found {JsonSerializer.Serialize(eos)})");
    }

    static bool IsInt(JsonElement e) => e.ValueKind == JsonValueKind.Number && e.TryGetInt32(out _);

    /// <summary>
    /// A lower bound on the parameter count this config describes (checked arithmetic: an overflow is a config error),
    /// compared against the checkpoint's size before the model is built.
    /// </summary>
    public virtual long MinParameterCount(string source) => Checked(source, () =>
        checked((long)VocabSize * HiddenSize + (long)NumHiddenLayers * HiddenSize * HiddenSize));

    protected static long Checked(string source, Func<long> count)
    {
        try { return count(); }
        catch (OverflowException) { throw new PeftConfigException($"{source}: the sizes describe more than 2^63 parameters"); }
    }

    protected static void RequirePositive(string source, string field, int value)
    {
        if (value <= 0) throw new PeftConfigException($"{source}: '{field}' must be a positive integer (found {value})");
    }

    protected static void RequireRange(string source, string field, int value, int max)
    {
        RequirePositive(source, field, value);
        if (value > max) throw new PeftConfigException($"{source}: '{field}' {value} is larger than any supported model (at most {max})");
    }

    /// <summary>Epsilons, rope bases and the like: finite and strictly positive.</summary>
    protected static void RequirePositive(string source, string field, double value)
    {
        if (!double.IsFinite(value) || value <= 0) throw new PeftConfigException($"{source}: '{field}' must be a positive number (found {value})");
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
