using System.Text.Json;
using System.Text.Json.Nodes;

namespace PeftSharp.Inference;

/// <summary>
/// How <see cref="TextGenerator"/> decodes, with transformers' GenerationConfig names and defaults
/// (max_new_tokens aside: HF's default is max_length=20, here 20 new tokens). Temperature, top-k and
/// top-p apply only when <see cref="DoSample"/> is set, as in HF; the repetition penalty applies always.
/// </summary>
public sealed record GenerationOptions
{
    public int MaxNewTokens { get; init; } = 20;
    public bool DoSample { get; init; }
    public double Temperature { get; init; } = 1.0;
    /// <summary>0 disables top-k filtering.</summary>
    public int TopK { get; init; } = 50;
    public double TopP { get; init; } = 1.0;
    public double RepetitionPenalty { get; init; } = 1.0;
    /// <summary>Null: the model config's eos_token_id (one id or a list). Empty: never stop on a token.</summary>
    public IReadOnlyList<int>? EosTokenIds { get; init; }
    /// <summary>Fills left padding and the rows that finished. Null: the config's pad_token_id, else the first eos id, else 0.</summary>
    public int? PadTokenId { get; init; }
    /// <summary>A row stops once its text contains one of these, ending in its newest token (HF's StopStringCriteria). Needs <see cref="Decode"/>.</summary>
    public IReadOnlyList<string> StopStrings { get; init; } = Array.Empty<string>();
    /// <summary>Seeds sampling (same seed, same ids). Null: torch's global generator, as HF does.</summary>
    public ulong? Seed { get; init; }
    /// <summary>Token ids to text: enables stop strings, streamed text deltas and <see cref="GenerationResult.Texts"/>.</summary>
    public Func<IReadOnlyList<int>, string>? Decode { get; init; }

    /// <summary>Throws <see cref="PeftConfigException"/> naming the first invalid field.</summary>
    public void Validate()
    {
        if (MaxNewTokens < 0) throw new PeftConfigException($"max_new_tokens must be >= 0 (found {MaxNewTokens})");
        if (!(Temperature > 0) || double.IsInfinity(Temperature)) throw new PeftConfigException($"temperature must be a positive number (found {Temperature})");
        if (TopK < 0) throw new PeftConfigException($"top_k must be >= 0 (found {TopK})");
        if (!(TopP > 0 && TopP <= 1)) throw new PeftConfigException($"top_p must be in (0, 1] (found {TopP})");
        if (!(RepetitionPenalty > 0) || double.IsInfinity(RepetitionPenalty)) throw new PeftConfigException($"repetition_penalty must be a positive number (found {RepetitionPenalty})");
        if (StopStrings.Any(string.IsNullOrEmpty)) throw new PeftConfigException("stop strings must not be empty");
        if (StopStrings.Count > 0 && Decode is null) throw new PeftConfigException("stop strings need a decode function (token ids to text), e.g. a tokenizer's");
    }

    /// <summary>
    /// Fills <see cref="EosTokenIds"/> and <see cref="PadTokenId"/>, where unset, from the model folder's
    /// generation_config.json, which transformers' generate() prefers over config.json.
    /// </summary>
    public GenerationOptions WithGenerationConfig(string modelDir)
    {
        var path = Path.Combine(modelDir, "generation_config.json");
        if (!File.Exists(path)) return this;
        JsonObject raw;
        try { raw = JsonNode.Parse(File.ReadAllText(path)) as JsonObject ?? throw new PeftFormatException(path, "must be a JSON object"); }
        catch (JsonException e) { throw new PeftFormatException(path, $"not valid JSON ({e.Message})"); }
        try
        {
            var eos = raw["eos_token_id"] switch
            {
                JsonArray a => a.Select(x => x!.GetValue<int>()).ToArray(),
                JsonValue v => new[] { v.GetValue<int>() },
                _ => null,
            };
            var pad = raw["pad_token_id"] is JsonValue p ? p.GetValue<int>() : (int?)null;
            return this with { EosTokenIds = EosTokenIds ?? eos, PadTokenId = PadTokenId ?? pad };
        }
        catch (Exception e) when (e is InvalidOperationException or FormatException or NullReferenceException)
        {
            throw new PeftFormatException(path, $"eos_token_id and pad_token_id must be integers ({e.Message})");
        }
    }
}

/// <summary>Why a row stopped.</summary>
public enum FinishReason
{
    /// <summary>Reached max_new_tokens.</summary>
    Length,
    /// <summary>Emitted an eos id.</summary>
    Eos,
    /// <summary>Its text came to contain a stop string.</summary>
    StopString,
    /// <summary>Its constrained output (a JSON object) closed.</summary>
    Complete,
}

/// <summary>One streamed token: batch row, its id, the decode step, and the row's new text when a decoder is given.</summary>
/// <param name="TextDelta">Text this token adds to the row (null without a decoder). Held back while it ends in an incomplete character, flushed at the row's last token.</param>
public readonly record struct GeneratedToken(int Row, int TokenId, int Step, string? TextDelta);

/// <summary>What <see cref="TextGenerator"/> returns.</summary>
public sealed class GenerationResult
{
    /// <summary>transformers' generate() output: each prompt row as given (left padding included), then the new ids; rows that finished early are filled with the pad id.</summary>
    public required int[][] Sequences { get; init; }
    /// <summary>Each row's prompt without its padding.</summary>
    public required int[][] PromptIds { get; init; }
    /// <summary>Each row's generated ids, eos or stop token included, pad fill excluded.</summary>
    public required int[][] NewTokens { get; init; }
    public required FinishReason[] FinishReasons { get; init; }
    /// <summary>Decoded <see cref="NewTokens"/> per row, when a decoder was given.</summary>
    public string[]? Texts { get; init; }
}
