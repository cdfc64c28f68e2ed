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
}
