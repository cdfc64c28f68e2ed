using System.Text.Json;
using System.Text.Json.Nodes;
using PeftSharp.Inference.Serving;

namespace PeftSharp.Server;

/// <summary>
/// Which request fields each endpoint honours. A field outside these lists is refused with a 400 naming it, so
/// nothing a client asks for is silently ignored; fields we do not implement are accepted only at the value that
/// asks for nothing (e.g. <c>presence_penalty: 0</c>, <c>tools: []</c>), since SDKs send such defaults.
/// </summary>
internal static class OpenAiFields
{
    /// <summary>Sampling and output fields both generation endpoints take (OpenAI's, then vLLM's extras).</summary>
    static readonly string[] Generation =
    {
        "model", "max_tokens", "temperature", "top_p", "n", "stream", "stream_options", "stop", "seed", "logprobs", "user",
        "top_k", "repetition_penalty", "ignore_eos", "return_token_ids",
    };

    public static readonly HashSet<string> Completions = new(Generation.Concat(new[] { "prompt", "echo" }), StringComparer.Ordinal);

    public static readonly HashSet<string> Chat = new(Generation.Concat(new[] { "messages", "max_completion_tokens", "top_logprobs", "response_format", "chat_template" }), StringComparer.Ordinal);

    public static readonly HashSet<string> Embeddings = new(new[] { "model", "input", "encoding_format", "dimensions", "user" }, StringComparer.Ordinal);

    /// <summary>OpenAI fields this server does not implement, with the values that mean "not used".</summary>
    static readonly Dictionary<string, Func<JsonNode?, bool>> Inert = new(StringComparer.Ordinal)
    {
        ["presence_penalty"] = IsZero,
        ["frequency_penalty"] = IsZero,
        ["logit_bias"] = n => n is null || n is JsonObject { Count: 0 },
        ["best_of"] = n => n is null || n is JsonValue v && v.TryGetValue<double>(out var d) && d == 1,
        ["suffix"] = n => n is null || n is JsonValue v && v.TryGetValue<string>(out var s) && s.Length == 0,
        ["tools"] = IsEmpty,
        ["functions"] = IsEmpty,
        ["tool_choice"] = n => n is null || n is JsonValue v && v.TryGetValue<string>(out var s) && s is "none" or "auto",
        ["function_call"] = n => n is null || n is JsonValue v && v.TryGetValue<string>(out var s) && s is "none" or "auto",
        ["parallel_tool_calls"] = n => true,
        ["store"] = n => n is null || n is JsonValue v && v.GetValueKind() == JsonValueKind.False,
        ["metadata"] = n => n is null || n is JsonObject { Count: 0 },
        ["service_tier"] = n => n is null || n is JsonValue v && v.TryGetValue<string>(out var s) && s is "auto" or "default",
        ["modalities"] = n => n is null || n is JsonArray a && a.All(x => x is JsonValue v && v.TryGetValue<string>(out var s) && s == "text"),
    };

    static bool IsZero(JsonNode? n) => n is null || n is JsonValue v && v.TryGetValue<double>(out var d) && d == 0;
    static bool IsEmpty(JsonNode? n) => n is null || n is JsonArray { Count: 0 };

    /// <summary>Refuses the first field that <paramref name="supported"/> lacks and that asks for something.</summary>
    public static void Check(JsonObject body, HashSet<string> supported)
    {
        foreach (var (key, value) in body)
        {
            if (supported.Contains(key)) continue;
            if (Inert.TryGetValue(key, out var inert))
            {
                if (inert(value)) continue;
                throw ServingException.BadRequest($"{key} is not supported by this server (found {value?.ToJsonString() ?? "null"})", key);
            }
            throw ServingException.BadRequest($"Unrecognized request argument supplied: {key}", key);
        }
    }
}
