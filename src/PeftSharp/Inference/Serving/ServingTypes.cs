using System.Threading.Channels;
using PeftSharp.Tuners;

namespace PeftSharp.Inference.Serving;

/// <summary>Limits of a <see cref="ServingEngine"/>.</summary>
public sealed record ServingOptions
{
    /// <summary>Sequences decoded together (the continuous batch); more requests wait in the queue.</summary>
    public int MaxBatchSize { get; init; } = 32;
    /// <summary>Requests waiting for a batch slot; beyond this a submit is refused (HTTP 429).</summary>
    public int MaxQueue { get; init; } = 256;
    /// <summary>Adapters held in the model at once (vLLM's --max-loras); the least recently used idle one is unloaded for a new one.</summary>
    public int MaxLoras { get; init; } = 8;
    /// <summary>
    /// Largest prompt (or sum of chat message contents) in UTF-8 bytes; checked before tokenizing, so an oversized
    /// prompt costs neither tokenizer time nor memory (HTTP 400). The HTTP body limit is derived from it.
    /// </summary>
    public int MaxPromptBytes { get; init; } = 1 << 20;
    /// <summary>Largest max_tokens a request may ask for.</summary>
    public int MaxTokensLimit { get; init; } = 4096;
    /// <summary>Folder that runtime-loaded adapters must lie in (null: loading at run time is off).</summary>
    public string? AdapterRoot { get; init; }
    /// <summary>The base model's name in requests (OpenAI's "model"). Null: the model folder's name, else "base".</summary>
    public string? ModelName { get; init; }
    /// <summary>Chat template used when a request names none: one of the folder's, or a built-in one (e.g. "chatml" for folders without a template).</summary>
    public string? ChatTemplate { get; init; }
    /// <summary>
    /// AdapterHub compositions served under their own names (<c>fused</c> → <c>"Fuse[a,b]"</c>) over adapters given at
    /// start; their member adapters share one PeftModel and stay resident.
    /// </summary>
    public IReadOnlyList<(string Name, string Compose)> Compositions { get; init; } = Array.Empty<(string, string)>();
    /// <summary>Saved AdapterFusion folders loaded into the compositions' shared PeftModel.</summary>
    public IReadOnlyList<string> FusionDirs { get; init; } = Array.Empty<string>();
}

/// <summary>One generation request: prompt ids, the base model or an adapter name, and its decoding options.</summary>
public sealed record ServingRequest
{
    public required IReadOnlyList<int> PromptIds { get; init; }
    /// <summary>An adapter name, or <see cref="RowAdapters.Base"/> for the base model.</summary>
    public string Adapter { get; init; } = RowAdapters.Base;
    public GenerationOptions Options { get; init; } = new();
    /// <summary>-1: no logprobs; 0..20: each generated token's logprob and that many most likely alternatives (OpenAI's top_logprobs).</summary>
    public int TopLogprobs { get; init; } = -1;
    /// <summary>Constrains the output to one JSON object (OpenAI's response_format json_object); it ends when the object closes.</summary>
    public bool JsonObject { get; init; }
}

/// <summary>One generated token and the text it adds (null without a tokenizer).</summary>
public readonly record struct ServedToken(int TokenId, string? TextDelta)
{
    /// <summary>The token's logprob when the request asked for them.</summary>
    public TokenLogprob? Logprob { get; init; }
}

/// <summary>A finished request.</summary>
public sealed record ServedCompletion(int[] PromptIds, int[] Tokens, string? Text, FinishReason Reason, bool Cancelled)
{
    /// <summary>One entry per generated token when the request asked for logprobs.</summary>
    public IReadOnlyList<TokenLogprob>? Logprobs { get; init; }
}

/// <summary>A submitted request: its tokens as they come, and the whole result at the end.</summary>
public sealed class ServingHandle
{
    internal ServingHandle(Channel<ServedToken> tokens, Task<ServedCompletion> completion)
    {
        Tokens = tokens.Reader;
        Completion = completion;
    }

    public ChannelReader<ServedToken> Tokens { get; }
    /// <summary>Completes when the request finishes or is cancelled (then <see cref="ServedCompletion.Cancelled"/> is set).</summary>
    public Task<ServedCompletion> Completion { get; }
}

/// <summary>An error with the HTTP status and OpenAI error type it maps to.</summary>
public sealed class ServingException : PeftSharpException
{
    public ServingException(int status, string message, string? param = null, string? code = null) : base(message)
    {
        Status = status;
        Param = param;
        Code = code;
    }

    public int Status { get; }
    public string? Param { get; }
    public string? Code { get; }

    /// <summary>OpenAI's error "type" for the status.</summary>
    public string Type => Status switch
    {
        401 or 403 => "permission_error",
        404 => "not_found_error",
        409 => "conflict_error",
        429 => "rate_limit_error",
        >= 500 => "server_error",
        _ => "invalid_request_error",
    };

    public static ServingException BadRequest(string message, string? param = null) => new(400, message, param);
}

/// <summary>A snapshot of the engine's counters (for /metrics).</summary>
public sealed record ServingMetrics(
    long RequestsTotal, long RequestsFinished, long RequestsCancelled, long RequestsRejected,
    int QueueLength, int BatchSize, long PromptTokensTotal, long GeneratedTokensTotal, double TokensPerSecond,
    int AdaptersLoaded, long AdapterBytes, long DecodeSteps);
