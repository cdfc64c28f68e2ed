using System.Text.Json.Nodes;
using PeftSharp.Models;

namespace PeftSharp.Tuners.PromptLearning;

/// <summary>
/// peft's <c>PromptLearningConfig</c>: the fields Prompt Tuning, P-Tuning and Prefix Tuning share. The sizes left
/// null are filled from the model's config by <see cref="PromptLearningMethod{T}.Prepare"/> and saved, as peft does.
/// </summary>
public abstract record PromptLearningConfig : PeftConfig
{
    public int NumVirtualTokens { get; init; }
    public int? TokenDim { get; init; }
    public int? NumTransformerSubmodules { get; init; }
    public int? NumAttentionHeads { get; init; }
    public int? NumLayers { get; init; }
    public IReadOnlyList<string>? ModulesToSave { get; init; }

    /// <summary>peft: num_virtual_tokens · num_transformer_submodules.</summary>
    public int TotalVirtualTokens => NumVirtualTokens * (NumTransformerSubmodules ?? 1);

    protected static T ReadPrompt<T>(T config, ConfigReader r) where T : PromptLearningConfig
    {
        var c = ReadCommon(config, r) with
        {
            NumVirtualTokens = r.Has("num_virtual_tokens") ? r.Int("num_virtual_tokens", 0, 1, AdapterSize.MaxTokens)
                : throw new PeftConfigException($"{r.Source}: 'num_virtual_tokens' is required"),
            TokenDim = NullableInt(r, "token_dim", AdapterSize.MaxWidth),
            NumTransformerSubmodules = NullableInt(r, "num_transformer_submodules", 2),
            NumAttentionHeads = NullableInt(r, "num_attention_heads", AdapterSize.MaxLayers),
            NumLayers = NullableInt(r, "num_layers", AdapterSize.MaxLayers),
            ModulesToSave = r.StringOrList("modules_to_save") is { } m ? (m.IsString ? new[] { m.Pattern! } : m.Items) : null,
        };
        if (c.NumVirtualTokens <= 0) throw new PeftConfigException($"{r.Source}: 'num_virtual_tokens' must be positive; found {c.NumVirtualTokens}");
        return c;
    }

    /// <summary>An optional size in 1..<paramref name="max"/> (null: filled from the model).</summary>
    protected static int? NullableInt(ConfigReader r, string key, int max) => r.Has(key) ? r.Int(key, 0, 1, max) : null;

    /// <summary>Elements of the prompt learner this prepared config builds (sizes filled), for <see cref="AdapterSize.Check"/>.</summary>
    public abstract long LearnerElements();

    protected override void WriteFields(JsonObject o)
    {
        o["num_virtual_tokens"] = NumVirtualTokens;
        o["token_dim"] = TokenDim;
        o["num_transformer_submodules"] = NumTransformerSubmodules;
        o["num_attention_heads"] = NumAttentionHeads;
        o["num_layers"] = NumLayers;
        o["modules_to_save"] = ModulesToSave is null ? null : new JsonArray(ModulesToSave.Select(m => (JsonNode?)JsonValue.Create(m)).ToArray());
    }
}
