using System.Globalization;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using Microsoft.AspNetCore.Http;
using PeftSharp.Inference;
using PeftSharp.Inference.Serving;

namespace PeftSharp.Server;

/// <summary>The OpenAI endpoints: request parsing and validation, responses and server-sent events.</summary>
internal sealed class OpenAiApi(ServingEngine engine)
{
    /// <summary>OpenAI's default max_tokens for /v1/completions.</summary>
    const int CompletionsDefaultMaxTokens = 16;
    /// <summary>Smallest temperature (and repetition penalty) that keeps the scaled logits finite.</summary>
    const double MinTemperature = 0.01;

    public Task Completions(HttpContext ctx) => Guarded(ctx, async body =>
    {
        var model = ModelOf(body);
        var prompts = Prompts(body["prompt"]);
        var options = Sampling(body, CompletionsDefaultMaxTokens);
        if (body["echo"] is JsonValue e && e.GetValueKind() == JsonValueKind.True) throw ServingException.BadRequest("echo is not supported", "echo");
        var requests = prompts.Select(p => new ServingRequest { PromptIds = p, Adapter = model, Options = options }).ToList();
        await Run(ctx, body, model, requests, chat: false);
    });

    public Task ChatCompletions(HttpContext ctx) => Guarded(ctx, async body =>
    {
        var model = ModelOf(body);
        if (body["messages"] is not JsonArray messages || messages.Count == 0) throw ServingException.BadRequest("messages must be a non-empty array", "messages");
        var normalized = new JsonArray();
        foreach (var m in messages)
        {
            if (m is not JsonObject o || o["role"] is not JsonValue role || role.GetValueKind() != JsonValueKind.String)
                throw ServingException.BadRequest("each message needs a string role", "messages");
            normalized.Add(new JsonObject { ["role"] = role.GetValue<string>(), ["content"] = Content(o["content"]) });
        }
        var template = body["chat_template"] is JsonValue t && t.GetValueKind() == JsonValueKind.String ? t.GetValue<string>() : null;
        IReadOnlyList<int> prompt;
        try { prompt = engine.EncodeChat(normalized, template); }
        catch (PeftSharpException e) when (e is not ServingException) { throw ServingException.BadRequest(e.Message, "messages"); }
        var max = Int(body, "max_completion_tokens") ?? Int(body, "max_tokens");
        var options = Sampling(body, max ?? Math.Max(1, Math.Min(engine.Options.MaxTokensLimit, engine.ContextLength - prompt.Count)));
        await Run(ctx, body, model, new List<ServingRequest> { new() { PromptIds = prompt, Adapter = model, Options = options } }, chat: true);
    });

    public async Task Models(HttpContext ctx)
    {
        long created = DateTimeOffset.UtcNow.ToUnixTimeSeconds();
        var data = new JsonArray { new JsonObject { ["id"] = engine.ModelName, ["object"] = "model", ["created"] = created, ["owned_by"] = "peftsharp", ["root"] = engine.ModelName, ["parent"] = null, ["max_model_len"] = engine.ContextLength } };
        foreach (var a in engine.AdapterNames)
            data.Add(new JsonObject { ["id"] = a, ["object"] = "model", ["created"] = created, ["owned_by"] = "peftsharp", ["root"] = a, ["parent"] = engine.ModelName, ["loaded"] = engine.IsLoaded(a) });
        await Json(ctx, 200, new JsonObject { ["object"] = "list", ["data"] = data });
    }

    public Task LoadAdapter(HttpContext ctx) => Guarded(ctx, async body =>
    {
        var name = Str(body, "lora_name") ?? throw ServingException.BadRequest("lora_name is required", "lora_name");
        var path = Str(body, "lora_path") ?? throw ServingException.BadRequest("lora_path is required", "lora_path");
        try { engine.LoadAdapterFromRoot(name, path); }
        catch (PeftSharpException e) when (e is not ServingException) { throw ServingException.BadRequest($"cannot load adapter '{name}': {e.Message}", "lora_path"); }
        await Text(ctx, $"Success: LoRA adapter '{name}' added successfully.");
    });

    public Task UnloadAdapter(HttpContext ctx) => Guarded(ctx, async body =>
    {
        var name = Str(body, "lora_name") ?? throw ServingException.BadRequest("lora_name is required", "lora_name");
        engine.UnloadAdapter(name);
        await Text(ctx, $"Success: LoRA adapter '{name}' removed successfully.");
    });

    public async Task Metrics(HttpContext ctx)
    {
        var m = engine.Metrics();
        var sb = new StringBuilder();
        void Metric(string name, string type, string help, double value, string labels = "")
        {
            sb.Append("# HELP ").Append(name).Append(' ').AppendLine(help);
            sb.Append("# TYPE ").Append(name).Append(' ').AppendLine(type);
            sb.Append(name).Append(labels).Append(' ').AppendLine(value.ToString("R", CultureInfo.InvariantCulture));
        }
        Metric("peft_requests_total", "counter", "Requests accepted", m.RequestsTotal);
        Metric("peft_requests_finished_total", "counter", "Requests finished (incl. failed)", m.RequestsFinished);
        Metric("peft_requests_cancelled_total", "counter", "Requests cancelled (client gone or shutdown)", m.RequestsCancelled);
        Metric("peft_requests_rejected_total", "counter", "Requests refused because the queue was full", m.RequestsRejected);
        Metric("peft_queue_length", "gauge", "Requests waiting for a batch slot", m.QueueLength);
        Metric("peft_batch_size", "gauge", "Sequences in the running batch", m.BatchSize);
        Metric("peft_prompt_tokens_total", "counter", "Prompt tokens prefilled", m.PromptTokensTotal);
        Metric("peft_generation_tokens_total", "counter", "Tokens generated", m.GeneratedTokensTotal);
        Metric("peft_generation_tokens_per_second", "gauge", "Tokens generated per second over the last 10 s", m.TokensPerSecond);
        Metric("peft_decode_steps_total", "counter", "Batched decode steps", m.DecodeSteps);
        Metric("peft_adapters_loaded", "gauge", "Adapters resident in the model", m.AdaptersLoaded);
        Metric("peft_adapter_memory_bytes", "gauge", "Bytes of resident adapter tensors", m.AdapterBytes);
        ctx.Response.ContentType = "text/plain; version=0.0.4";
        await ctx.Response.WriteAsync(sb.ToString());
    }

    // ---- running a request ----

    async Task Run(HttpContext ctx, JsonObject body, string model, List<ServingRequest> requests, bool chat)
    {
        var abort = ctx.RequestAborted;
        var handles = new List<ServingHandle>();
        using var cancelAll = CancellationTokenSource.CreateLinkedTokenSource(abort);
        try
        {
            foreach (var r in requests) handles.Add(engine.Submit(r, cancelAll.Token));
            await Respond(ctx, model, handles, chat, Bool(body, "stream"), Bool(body, "return_token_ids"), abort);
        }
        finally
        {
            // However the response ended (done, client gone, write failed), no sequence of it keeps running.
            cancelAll.Cancel();
        }
    }

    static async Task Respond(HttpContext ctx, string model, List<ServingHandle> handles, bool chat, bool stream, bool returnIds, CancellationToken abort)
    {
        var id = (chat ? "chatcmpl-" : "cmpl-") + Guid.NewGuid().ToString("N");
        long created = DateTimeOffset.UtcNow.ToUnixTimeSeconds();
        string kind = chat ? "chat.completion" : "text_completion";
        if (!stream)
        {
            var results = new List<ServedCompletion>();
            foreach (var h in handles) results.Add(await h.Completion);
            var choices = new JsonArray();
            for (int i = 0; i < results.Count; i++)
            {
                var r = results[i];
                var choice = new JsonObject { ["index"] = i };
                if (chat) choice["message"] = new JsonObject { ["role"] = "assistant", ["content"] = r.Text ?? "" };
                else { choice["text"] = r.Text ?? ""; choice["logprobs"] = null; }
                choice["finish_reason"] = Reason(r.Reason);
                if (returnIds) { choice["token_ids"] = Ids(r.Tokens); choice["prompt_token_ids"] = Ids(r.PromptIds); }
                choices.Add(choice);
            }
            int promptTokens = results.Sum(r => r.PromptIds.Length), completion = results.Sum(r => r.Tokens.Length);
            await Json(ctx, 200, new JsonObject
            {
                ["id"] = id, ["object"] = kind, ["created"] = created, ["model"] = model, ["choices"] = choices,
                ["usage"] = new JsonObject { ["prompt_tokens"] = promptTokens, ["completion_tokens"] = completion, ["total_tokens"] = promptTokens + completion },
            });
            return;
        }

        ctx.Response.StatusCode = 200;
        ctx.Response.ContentType = "text/event-stream";
        ctx.Response.Headers.CacheControl = "no-cache";
        string chunkKind = chat ? "chat.completion.chunk" : "text_completion";
        async Task Send(JsonObject choice)
        {
            var chunk = new JsonObject { ["id"] = id, ["object"] = chunkKind, ["created"] = created, ["model"] = model, ["choices"] = new JsonArray(choice) };
            await ctx.Response.WriteAsync("data: " + chunk.ToJsonString() + "\n\n", abort);
            await ctx.Response.Body.FlushAsync(abort);
        }
        try
        {
            for (int i = 0; i < handles.Count; i++)
            {
                if (chat) await Send(new JsonObject { ["index"] = i, ["delta"] = new JsonObject { ["role"] = "assistant", ["content"] = "" }, ["finish_reason"] = null });
                await foreach (var t in handles[i].Tokens.ReadAllAsync(abort))
                {
                    var choice = new JsonObject { ["index"] = i };
                    if (chat) choice["delta"] = new JsonObject { ["content"] = t.TextDelta ?? "" };
                    else { choice["text"] = t.TextDelta ?? ""; choice["logprobs"] = null; }
                    choice["finish_reason"] = null;
                    if (returnIds) choice["token_ids"] = new JsonArray(t.TokenId);
                    await Send(choice);
                }
                var result = await handles[i].Completion;
                var last = new JsonObject { ["index"] = i };
                if (chat) last["delta"] = new JsonObject();
                else { last["text"] = ""; last["logprobs"] = null; }
                last["finish_reason"] = Reason(result.Reason);
                if (returnIds) last["prompt_token_ids"] = Ids(result.PromptIds);
                await Send(last);
            }
            await ctx.Response.WriteAsync("data: [DONE]\n\n", abort);
        }
        catch (Exception e) when (e is OperationCanceledException or IOException || abort.IsCancellationRequested)
        {
            // The client left; the caller cancels its sequences, which frees their batch slots.
        }
        catch (ServingException e)
        {
            // Headers are sent: report in-band, as OpenAI does for mid-stream errors.
            await ctx.Response.WriteAsync("data: " + ErrorBody(e).ToJsonString() + "\n\n");
        }
    }

    // ---- parsing ----

    string ModelOf(JsonObject body)
    {
        var model = Str(body, "model") ?? throw ServingException.BadRequest("model is required (the base model's name or an adapter's)", "model");
        if (!engine.Serves(model))
            throw new ServingException(404, $"The model `{model}` does not exist. Serving: {string.Join(", ", new[] { engine.ModelName }.Concat(engine.AdapterNames))}", "model", "model_not_found");
        return model;
    }

    /// <summary>OpenAI's prompt: a string, a list of strings, a list of token ids, or a list of such lists.</summary>
    List<IReadOnlyList<int>> Prompts(JsonNode? node)
    {
        static bool IsInt(JsonNode? n) => n is JsonValue v && v.GetValueKind() == JsonValueKind.Number;
        var result = new List<IReadOnlyList<int>>();
        switch (node)
        {
            case JsonValue v when v.GetValueKind() == JsonValueKind.String:
                result.Add(engine.Encode(v.GetValue<string>()));
                break;
            case JsonArray a when a.Count > 0 && a.All(IsInt):
                result.Add(TokenIds(a));
                break;
            case JsonArray a when a.Count > 0 && a.All(x => x is JsonValue s && s.GetValueKind() == JsonValueKind.String):
                result.AddRange(a.Select(x => engine.Encode(x!.GetValue<string>())));
                break;
            case JsonArray a when a.Count > 0 && a.All(x => x is JsonArray inner && inner.Count > 0 && inner.All(IsInt)):
                result.AddRange(a.Select(x => TokenIds((JsonArray)x!)));
                break;
            default:
                throw ServingException.BadRequest("prompt must be a string, a list of strings, a non-empty list of token ids, or a list of such lists", "prompt");
        }
        if (result.Count > engine.Options.MaxBatchSize) throw ServingException.BadRequest($"at most {engine.Options.MaxBatchSize} prompts per request", "prompt");
        return result;
    }

    static int[] TokenIds(JsonArray a) => a.Select(x =>
        ((JsonValue)x!).TryGetValue<int>(out var id) ? id : throw ServingException.BadRequest($"token id {x} is not a 32-bit integer", "prompt")).ToArray();

    /// <summary>Message content: a string or OpenAI's list of {"type": "text", "text": ...} parts.</summary>
    static string Content(JsonNode? node) => node switch
    {
        null => "",
        JsonValue v when v.GetValueKind() == JsonValueKind.String => v.GetValue<string>(),
        JsonArray parts => string.Concat(parts.Select(p => p is JsonObject o && Str(o, "type") == "text" && Str(o, "text") is { } t ? t
            : throw ServingException.BadRequest("only text content parts are supported", "messages"))),
        _ => throw ServingException.BadRequest("message content must be a string or a list of text parts", "messages"),
    };

    /// <summary>OpenAI/vLLM sampling fields to generation options: temperature 0 is greedy; top_k, repetition_penalty and ignore_eos are vLLM's (top_k -1 or 0: off).</summary>
    static GenerationOptions Sampling(JsonObject body, int defaultMaxTokens)
    {
        if (Int(body, "n") is int n && n != 1) throw ServingException.BadRequest("only n = 1 is supported", "n");
        var temperature = Num(body, "temperature") ?? 1.0;
        // Below 0.01 the scaled logits overflow float32 (softmax gives NaN); 0 is the way to ask for greedy.
        if (!(temperature == 0 || temperature >= MinTemperature && temperature <= 2))
            throw ServingException.BadRequest($"temperature must be 0 (greedy) or in [{MinTemperature}, 2] (found {temperature})", "temperature");
        var topP = Num(body, "top_p") ?? 1.0;
        if (!(topP > 0 && topP <= 1)) throw ServingException.BadRequest($"top_p must be in (0, 1] (found {topP})", "top_p");
        var topK = Int(body, "top_k") ?? -1;
        if (topK < -1) throw ServingException.BadRequest($"top_k must be -1 (off) or a positive integer (found {topK})", "top_k");
        var repetition = Num(body, "repetition_penalty") ?? 1.0;
        if (!(repetition >= MinTemperature && repetition <= 10)) throw ServingException.BadRequest($"repetition_penalty must be in [{MinTemperature}, 10] (found {repetition})", "repetition_penalty");
        var maxTokens = Int(body, "max_tokens") ?? defaultMaxTokens;
        ulong? seed = body["seed"] is null ? null : body["seed"] is JsonValue sv && sv.TryGetValue<long>(out var s) ? unchecked((ulong)s) : throw ServingException.BadRequest("seed must be an integer", "seed");
        var stop = body["stop"] switch
        {
            null => Array.Empty<string>(),
            JsonValue v when v.GetValueKind() == JsonValueKind.String => new[] { v.GetValue<string>() },
            JsonArray a when a.Count <= 4 && a.All(x => x is JsonValue sx && sx.GetValueKind() == JsonValueKind.String) => a.Select(x => x!.GetValue<string>()).ToArray(),
            _ => throw ServingException.BadRequest("stop must be a string or a list of up to 4 strings", "stop"),
        };
        if (stop.Any(string.IsNullOrEmpty)) throw ServingException.BadRequest("stop strings must not be empty", "stop");
        return new GenerationOptions
        {
            MaxNewTokens = maxTokens,
            DoSample = temperature > 0,
            Temperature = temperature > 0 ? temperature : 1.0,
            TopP = topP,
            TopK = topK <= 0 ? 0 : topK,
            RepetitionPenalty = repetition,
            Seed = seed,
            StopStrings = stop,
            // vLLM's ignore_eos: generate exactly max_tokens (benchmarks, tests).
            EosTokenIds = Bool(body, "ignore_eos") ? Array.Empty<int>() : null,
        };
    }

    static string? Str(JsonObject o, string key) => o[key] switch
    {
        null => null,
        JsonValue v when v.GetValueKind() == JsonValueKind.String => v.GetValue<string>(),
        _ => throw ServingException.BadRequest($"{key} must be a string", key),
    };

    static int? Int(JsonObject o, string key) => o[key] switch
    {
        null => null,
        JsonValue v when v.GetValueKind() == JsonValueKind.Number && v.TryGetValue<int>(out var i) => i,
        JsonValue v when v.GetValueKind() == JsonValueKind.Number && v.TryGetValue<double>(out var d) && d == Math.Floor(d) && Math.Abs(d) < int.MaxValue => (int)d,
        _ => throw ServingException.BadRequest($"{key} must be an integer", key),
    };

    static double? Num(JsonObject o, string key) => o[key] switch
    {
        null => null,
        JsonValue v when v.GetValueKind() == JsonValueKind.Number && v.TryGetValue<double>(out var d) && double.IsFinite(d) => d,
        _ => throw ServingException.BadRequest($"{key} must be a finite number", key),
    };

    static bool Bool(JsonObject o, string key) => o[key] switch
    {
        null => false,
        JsonValue v when v.GetValueKind() is JsonValueKind.True or JsonValueKind.False => v.GetValue<bool>(),
        _ => throw ServingException.BadRequest($"{key} must be true or false", key),
    };

    static JsonArray Ids(IEnumerable<int> ids) => new(ids.Select(i => (JsonNode)i).ToArray());

    static string Reason(FinishReason r) => r == FinishReason.Length ? "length" : "stop";

    // ---- plumbing ----

    /// <summary>Reads the JSON body and maps every failure to OpenAI's error format; nothing a client sends reaches the host as an exception.</summary>
    static async Task Guarded(HttpContext ctx, Func<JsonObject, Task> handler)
    {
        try
        {
            await handler(await ReadBody(ctx));
        }
        catch (OperationCanceledException) when (ctx.RequestAborted.IsCancellationRequested) { }
        catch (ServingException e) when (!ctx.Response.HasStarted) { await Json(ctx, e.Status, ErrorBody(e)); }
        catch (PeftSharpException e) when (!ctx.Response.HasStarted) { await Json(ctx, 400, ErrorBody(ServingException.BadRequest(e.Message))); }
        catch (Exception e) when (!ctx.Response.HasStarted) { await Json(ctx, 500, ErrorBody(new ServingException(500, $"internal error: {e.Message}"))); }
    }

    /// <summary>
    /// The body as one JSON object, checked whole before any field is read: UTF-8 (System.Text.Json would fail
    /// only when a bad string is first read), no duplicate keys (JSON leaves them undefined), bounded depth.
    /// Kestrel's MaxRequestBodySize bounds its size (413).
    /// </summary>
    static async Task<JsonObject> ReadBody(HttpContext ctx)
    {
        byte[] bytes;
        try
        {
            // Refused from the header alone, before a byte is read (a client that sent Expect: 100-continue never uploads it).
            var limit = ctx.Features.Get<Microsoft.AspNetCore.Http.Features.IHttpMaxRequestBodySizeFeature>()?.MaxRequestBodySize;
            if (ctx.Request.ContentLength is long length && length > limit)
                throw new ServingException(413, $"the request body has {length} bytes; this server accepts at most {limit} (raise --max-prompt-bytes)");
            using var buffer = new MemoryStream(ctx.Request.ContentLength is long n ? (int)Math.Min(n, 64 << 20) : 0);
            await ctx.Request.Body.CopyToAsync(buffer, ctx.RequestAborted);
            bytes = buffer.Length == buffer.Capacity ? buffer.GetBuffer() : buffer.ToArray();
        }
        catch (Microsoft.AspNetCore.Http.BadHttpRequestException e) { throw new ServingException(e.StatusCode, $"the request body was refused: {e.Message}"); }
        if (!System.Text.Unicode.Utf8.IsValid(bytes)) throw ServingException.BadRequest("the request body is not valid UTF-8");
        try
        {
            return JsonNode.Parse(bytes, null, new JsonDocumentOptions { AllowDuplicateProperties = false, MaxDepth = 64 }) as JsonObject
                ?? throw ServingException.BadRequest("the request body must be a JSON object");
        }
        catch (JsonException e) { throw ServingException.BadRequest($"the request body is not valid JSON: {e.Message}"); }
    }

    /// <summary>OpenAI's error body for a status the router or Kestrel set without one (unknown route 404, wrong method 405, ...).</summary>
    public static Task StatusBody(HttpContext ctx)
    {
        var (status, path, method) = (ctx.Response.StatusCode, ctx.Request.Path.Value, ctx.Request.Method);
        var message = status switch
        {
            404 => $"unknown route {method} {path} (see /v1/models, /v1/completions, /v1/chat/completions)",
            405 => $"method {method} is not allowed on {path}",
            _ => $"request failed with HTTP {status}",
        };
        return Json(ctx, status, ErrorBody(new ServingException(status, message)));
    }

    static JsonObject ErrorBody(ServingException e) => new()
    {
        ["error"] = new JsonObject { ["message"] = e.Message, ["type"] = e.Type, ["param"] = e.Param, ["code"] = e.Code ?? (JsonNode?)e.Status.ToString(CultureInfo.InvariantCulture) },
    };

    static async Task Json(HttpContext ctx, int status, JsonNode body)
    {
        ctx.Response.StatusCode = status;
        ctx.Response.ContentType = "application/json";
        await ctx.Response.WriteAsync(body.ToJsonString());
    }

    static async Task Text(HttpContext ctx, string text)
    {
        ctx.Response.StatusCode = 200;
        ctx.Response.ContentType = "text/plain";
        await ctx.Response.WriteAsync(text);
    }
}
