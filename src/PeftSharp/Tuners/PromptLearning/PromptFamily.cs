using PeftSharp.Tuners.AdaptionPrompt;
using PeftSharp.Tuners.PrefixTuning;
using PeftSharp.Tuners.PromptTuning;
using PeftSharp.Tuners.PTuning;

namespace PeftSharp.Tuners.PromptLearning;

/// <summary>Settings a training recipe gives for the prompt family (peft's field names; defaults of the papers' small setups).</summary>
public sealed record PromptFamilySettings
{
    public int NumVirtualTokens { get; init; } = 20;
    public string PromptTuningInit { get; init; } = "RANDOM";
    public string? PromptTuningInitText { get; init; }
    public string? TokenizerNameOrPath { get; init; }
    public string EncoderReparameterizationType { get; init; } = "MLP";
    public int? EncoderHiddenSize { get; init; }
    public bool PrefixProjection { get; init; }
    public int AdapterLen { get; init; } = 10;
    /// <summary>null = every layer.</summary>
    public int? AdapterLayers { get; init; }
}

/// <summary>
/// The training recipe names of the prompt family and the peft config each one means:
/// prompt_tuning → PROMPT_TUNING, p_tuning → P_TUNING, prefix_tuning → PREFIX_TUNING (prefix_projection as given),
/// p_tuning_v2 → PREFIX_TUNING without projection (deep prompts on every layer; classification heads are trained
/// through modules_to_save for SEQ_CLS), llama_adapter → ADAPTION_PROMPT.
/// </summary>
public static class PromptFamily
{
    public static readonly IReadOnlyList<string> FinetuningTypes = new[] { "prompt_tuning", "p_tuning", "prefix_tuning", "p_tuning_v2", "llama_adapter" };

    public static PeftConfig Config(string finetuningType, PromptFamilySettings s, string taskType, int numLayers, string? baseModelPath = null)
    {
        PeftConfig c = finetuningType switch
        {
            "prompt_tuning" => new PromptTuningConfig
            {
                NumVirtualTokens = s.NumVirtualTokens, PromptTuningInit = s.PromptTuningInit,
                PromptTuningInitText = s.PromptTuningInitText, TokenizerNameOrPath = s.TokenizerNameOrPath,
            },
            "p_tuning" => new PromptEncoderConfig
            {
                NumVirtualTokens = s.NumVirtualTokens, EncoderReparameterizationType = s.EncoderReparameterizationType, EncoderHiddenSize = s.EncoderHiddenSize,
            },
            "prefix_tuning" => new PrefixTuningConfig { NumVirtualTokens = s.NumVirtualTokens, PrefixProjection = s.PrefixProjection, EncoderHiddenSize = s.EncoderHiddenSize },
            "p_tuning_v2" => PrefixTuningConfig.PTuningV2(s.NumVirtualTokens),
            "llama_adapter" => new AdaptionPromptConfig { AdapterLen = s.AdapterLen, AdapterLayers = s.AdapterLayers ?? numLayers },
            _ => throw new PeftConfigException($"finetuning_type '{finetuningType}' is not a prompt-family method (supported: {string.Join(", ", FinetuningTypes)})"),
        };
        return c with { TaskType = taskType, BaseModelNameOrPath = baseModelPath };
    }

    /// <summary>The recipe keys each type reads (peft's field names).</summary>
    static string[] KeysOf(string finetuningType) => finetuningType switch
    {
        "prompt_tuning" => new[] { "num_virtual_tokens", "prompt_tuning_init", "prompt_tuning_init_text" },
        "p_tuning" => new[] { "num_virtual_tokens", "encoder_reparameterization_type", "encoder_hidden_size" },
        "prefix_tuning" => new[] { "num_virtual_tokens", "prefix_projection", "encoder_hidden_size" },
        "p_tuning_v2" => new[] { "num_virtual_tokens" },
        "llama_adapter" => new[] { "adapter_len", "adapter_layers" },
        _ => throw new ArgumentException(finetuningType),
    };

    /// <summary>The settings a recipe's keys give (TEXT init reads the model folder's tokenizer).</summary>
    public static PromptFamilySettings Settings(RecipeKeys k, string? modelDir)
    {
        var init = k.String("prompt_tuning_init") ?? "RANDOM";
        return new PromptFamilySettings
        {
            NumVirtualTokens = k.Int("num_virtual_tokens", 20),
            PromptTuningInit = init,
            PromptTuningInitText = k.String("prompt_tuning_init_text"),
            TokenizerNameOrPath = init == "TEXT" ? modelDir : null,
            EncoderReparameterizationType = k.String("encoder_reparameterization_type") ?? "MLP",
            EncoderHiddenSize = k.OptInt("encoder_hidden_size"),
            PrefixProjection = k.Bool("prefix_projection", false),
            AdapterLen = k.Int("adapter_len", 10),
            AdapterLayers = k.OptInt("adapter_layers"),
        };
    }

    /// <summary>The finetuning_type <paramref name="name"/> of the prompt family, declared by the method that builds it.</summary>
    public static Recipe Recipe(string name) => new(name)
    {
        Keys = KeysOf(name),
        Validate = (k, _) => Settings(k, null),
        Config = ctx => Config(name, Settings(ctx.Keys, ctx.ModelDir), ctx.TaskType, ctx.Model.Config.NumHiddenLayers, ctx.ModelDir),
    };

    /// <summary>A methods-benchmark row as `peft train` builds it (the recipe's keys, their defaults otherwise).</summary>
    public static BenchEntry Bench(string name, string finetuningType, double lr, Dictionary<string, System.Text.Json.Nodes.JsonNode?>? keys = null) =>
        new(name, "prompt", lr) { Recipe = finetuningType, Keys = keys is null ? null : (_, _) => keys };
}
