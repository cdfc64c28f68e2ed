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
    /// <summary>Most choices one request may ask for (n).</summary>
    const int MaxChoices = 16;

    /// <summary>What one request asked for, beyond the per-sequence <see cref="ServingRequest"/>s.</summary>
    sealed record Shape(bool Chat, bool Stream, bool IncludeUsage, bool ReturnIds, bool Logprobs, int N, string[]? Echo);

    public Task Completions(HttpContext ctx) => Guarded(ctx, async body =>
    {
        OpenAiFields.Check(body, OpenAiFields.Completions);
        var model = ModelOf(ctx, body);
        var prompts = Prompts(body["prompt"]);
        var options = Sampling(body, CompletionsDefaultMaxTokens);
        // Completions' logprobs is the number of alternatives (0..20), or null for none.
        int top = Int(body, "logprobs") ?? -1;
        if (top < -1 || top > ServingEngine.MaxTopLogprobs) throw ServingException.BadRequest($"logprobs must be in [0, {ServingEngine.MaxTopLogprobs}] (found {top})", "logprobs");
        bool echo = Bool(body, "echo");
        if (echo && top >= 0) throw ServingException.BadRequest("echo with logprobs (the prompt's own logprobs) is not supported; ask for one of them", "echo");
        var echoed = echo ? prompts.Select(p => engine.Tokenizer is null ? "" : engine.Decode(p)).ToArray() : null;
        var requests = Choices(prompts.Select(p => new ServingRequest { PromptIds = p, Adapter = model, Options = options, TopLogprobs = top }), body);
        await Run(ctx, model, requests, ShapeOf(body, chat: false, top >= 0, echoed));
    });

    public Task ChatCompletions(HttpContext ctx) => Guarded(ctx, async body =>
    {
        OpenAiFields.Check(body, OpenAiFields.Chat);
        var model = ModelOf(ctx, body);
        var normalized = Messages(body["messages"]);
        var template = body["chat_template"] is JsonValue t && t.GetValueKind() == JsonValueKind.String ? t.GetValue<string>() : null;
        IReadOnlyList<int> prompt;
        try { prompt = engine.EncodeChat(normalized, template); }
        catch (PeftSharpException e) when (e is not ServingException) { throw ServingException.BadRequest(e.Message, "messages"); }
        var max = Int(body, "max_completion_tokens") ?? Int(body, "max_tokens");
        var options = Sampling(body, max ?? Math.Max(1, Math.Min(engine.Options.MaxTokensLimit, engine.ContextLength - prompt.Count)));
        // Chat's logprobs is a flag; top_logprobs (0..20) asks for alternatives and needs it.
        bool logprobs = Bool(body, "logprobs");
        var topLogprobs = Int(body, "top_logprobs");
        if (topLogprobs is not null && !logprobs) throw ServingException.BadRequest("top_logprobs needs logprobs: true", "top_logprobs");
        if (topLogprobs is < 0 or > ServingEngine.MaxTopLogprobs) throw ServingException.BadRequest($"top_logprobs must be in [0, {ServingEngine.MaxTopLogprobs}] (found {topLogprobs})", "top_logprobs");
        var request = new ServingRequest
        {
            PromptIds = prompt, Adapter = model, Options = options, TopLogprobs = logprobs ? topLogprobs ?? 0 : -1, JsonObject = JsonObjectFormat(body["response_format"]),
        };
        await Run(ctx, model, Choices(new[] { request }, body), ShapeOf(body, chat: true, logprobs, null));
    });

    public Task Embeddings(HttpContext ctx) => Guarded(ctx, async body =>
    {
        OpenAiFields.Check(body, OpenAiFields.Embeddings);
        var model = ModelOf(ctx, body);
        var inputs = Prompts(body["input"], "input");
        var format = Str(body, "encoding_format") ?? "float";
        if (format is not ("float" or "base64")) throw ServingException.BadRequest($"encoding_format must be float or base64 (found {format})", "encoding_format");
        var vectors = engine.Embed(inputs, model);
        if (Int(body, "dimensions") is int d && d != vectors[0].Length)
            throw ServingException.BadRequest($"dimensions must be this model's embedding size, {vectors[0].Length} (found {d}); truncation is not supported", "dimensions");
        var data = new JsonArray();
        for (int i = 0; i < vectors.Length; i++)
        {
            JsonNode embedding = format == "float"
                ? new JsonArray(vectors[i].Select(v => (JsonNode)v).ToArray())
                : Convert.ToBase64String(System.Runtime.InteropServices.MemoryMarshal.AsBytes(vectors[i].AsSpan()));
            data.Add(new JsonObject { ["object"] = "embedding", ["index"] = i, ["embedding"] = embedding });
        }
        int tokens = inputs.Sum(x => x.Count);
        Usage(ctx, tokens, 0);
        await Json(ctx, 200, new JsonObject
        {
            ["object"] = "list", ["data"] = data, ["model"] = model,
            ["usage"] = new JsonObject { ["prompt_tokens"] = tokens, ["total_tokens"] = tokens },
        });
    });

    public async Task Models(HttpContext ctx)
    {
        var data = new JsonArray(engine.ModelNames().Select(n => (JsonNode)ModelCard(n)).ToArray());
        await Json(ctx, 200, new JsonObject { ["object"] = "list", ["data"] = data });
    }

    /// <summary>GET /v1/models/{id}: the SDK's models.retrieve.</summary>
    public async Task Model(HttpContext ctx, string id)
    {
        if (!engine.Serves(id))
        {
            await Json(ctx, 404, ErrorBody(new ServingException(404, $"The model `{id}` does not exist.", "model", "model_not_found")));
            return;
        }
        await Json(ctx, 200, ModelCard(id));
    }

    JsonObject ModelCard(string id)
    {
        long created = engine.StartedAt.ToUnixTimeSeconds();
        bool isBase = engine.IsBase(id);
        var card = new JsonObject
        {
            ["id"] = id, ["object"] = "model", ["created"] = created, ["owned_by"] = "peftsharp", ["root"] = id,
            ["parent"] = isBase ? null : engine.ModelName, ["max_model_len"] = engine.ContextLength,
        };
        if (!isBase) card["loaded"] = engine.IsLoaded(id);
        return card;
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

    /// <summary>n copies of each request (index = prompt * n + j, as OpenAI numbers choices); copy j of a seeded request draws with seed + j.</summary>
    static List<ServingRequest> Choices(IEnumerable<ServingRequest> requests, JsonObject body)
    {
        int n = Int(body, "n") ?? 1;
        if (n < 1 || n > MaxChoices) throw ServingException.BadRequest($"n must be in [1, {MaxChoices}] (found {n})", "n");
        return requests.SelectMany(r => Enumerable.Range(0, n).Select(j =>
            j == 0 || r.Options.Seed is not ulong seed ? r : r with { Options = r.Options with { Seed = unchecked(seed + (ulong)j) } })).ToList();
    }

    static Shape ShapeOf(JsonObject body, bool chat, bool logprobs, string[]? echo)
    {
        bool stream = Bool(body, "stream");
        bool includeUsage = false;
        switch (body["stream_options"])
        {
            case null: break;
            case JsonObject o when stream:
                foreach (var (key, _) in o)
                    if (key != "include_usage") throw ServingException.BadRequest($"stream_options.{key} is not supported (only include_usage)", "stream_options");
                includeUsage = Bool(o, "include_usage");
                break;
            case JsonObject: throw ServingException.BadRequest("stream_options is only allowed when stream is true", "stream_options");
            default: throw ServingException.BadRequest("stream_options must be an object", "stream_options");
        }
        return new Shape(chat, stream, includeUsage, Bool(body, "return_token_ids"), logprobs, Int(body, "n") ?? 1, echo);
    }

    async Task Run(HttpContext ctx, string model, List<ServingRequest> requests, Shape shape)
    {
        if (requests.Count > engine.Options.MaxQueue) throw ServingException.BadRequest($"the request asks for {requests.Count} sequences; this server queues at most {engine.Options.MaxQueue}", "n");
        var abort = ctx.RequestAborted;
        var handles = new List<ServingHandle>();
        using var cancelAll = CancellationTokenSource.CreateLinkedTokenSource(abort);
        try
        {
            foreach (var r in requests) handles.Add(engine.Submit(r, cancelAll.Token));
            if (shape.Stream) await Stream(ctx, model, handles, shape, abort);
            else await Whole(ctx, model, handles, shape);
        }
        finally
        {
            // However the response ended (done, client gone, write failed), no sequence of it keeps running.
            cancelAll.Cancel();
        }
    }

    async Task Whole(HttpContext ctx, string model, List<ServingHandle> handles, Shape shape)
    {
        var results = new List<ServedCompletion>();
        foreach (var h in handles) results.Add(await h.Completion);
        var choices = new JsonArray();
        for (int i = 0; i < results.Count; i++)
        {
            var r = results[i];
            var choice = new JsonObject { ["index"] = i };
            if (shape.Chat)
            {
                choice["message"] = new JsonObject { ["role"] = "assistant", ["content"] = r.Text ?? "", ["refusal"] = null };
                choice["logprobs"] = shape.Logprobs ? ChatLogprobs(r.Logprobs!) : null;
            }
            else
            {
                var echo = shape.Echo?[i / shape.N] ?? "";
                choice["text"] = echo + (r.Text ?? "");
                choice["logprobs"] = shape.Logprobs ? CompletionLogprobs(r.Logprobs!, echo.Length) : null;
            }
            choice["finish_reason"] = Reason(r.Reason);
            if (shape.ReturnIds) { choice["token_ids"] = Ids(r.Tokens); choice["prompt_token_ids"] = Ids(r.PromptIds); }
            choices.Add(choice);
        }
        var (prompt, completion) = Counts(results, shape.N);
        Usage(ctx, prompt, completion);
        await Json(ctx, 200, new JsonObject
        {
            ["id"] = Id(shape), ["object"] = shape.Chat ? "chat.completion" : "text_completion", ["created"] = DateTimeOffset.UtcNow.ToUnixTimeSeconds(),
            ["model"] = model, ["system_fingerprint"] = null, ["choices"] = choices, ["usage"] = UsageBody(prompt, completion),
        });
    }

    /// <summary>Prompt tokens count once per prompt (not per choice), as OpenAI bills them.</summary>
    static (int Prompt, int Completion) Counts(IReadOnlyList<ServedCompletion> results, int n) =>
        (results.Where((_, i) => i % n == 0).Sum(r => r.PromptIds.Length), results.Sum(r => r.Tokens.Length));

    static JsonObject UsageBody(int prompt, int completion) => new() { ["prompt_tokens"] = prompt, ["completion_tokens"] = completion, ["total_tokens"] = prompt + completion };

    static string Id(Shape shape) => (shape.Chat ? "chatcmpl-" : "cmpl-") + Guid.NewGuid().ToString("N");

    async Task Stream(HttpContext ctx, string model, List<ServingHandle> handles, Shape shape, CancellationToken abort)
    {
        var id = Id(shape);
        long created = DateTimeOffset.UtcNow.ToUnixTimeSeconds();
        ctx.Response.StatusCode = 200;
        ctx.Response.ContentType = "text/event-stream";
        ctx.Response.Headers.CacheControl = "no-cache";
        string kind = shape.Chat ? "chat.completion.chunk" : "text_completion";
        async Task Send(JsonObject? choice, JsonObject? usage = null)
        {
            var chunk = new JsonObject
            {
                ["id"] = id, ["object"] = kind, ["created"] = created, ["model"] = model, ["system_fingerprint"] = null,
                ["choices"] = choice is null ? new JsonArray() : new JsonArray(choice),
            };
            if (shape.IncludeUsage) chunk["usage"] = usage;
            await ctx.Response.WriteAsync("data: " + chunk.ToJsonString() + "\n\n", abort);
            await ctx.Response.Body.FlushAsync(abort);
        }
        try
        {
            var results = new List<ServedCompletion>();
            for (int i = 0; i < handles.Count; i++)
            {
                var echo = shape.Echo?[i / shape.N];
                int offset = echo?.Length ?? 0;
                if (shape.Chat) await Send(new JsonObject { ["index"] = i, ["delta"] = new JsonObject { ["role"] = "assistant", ["content"] = "" }, ["logprobs"] = null, ["finish_reason"] = null });
                else if (!string.IsNullOrEmpty(echo)) await Send(new JsonObject { ["index"] = i, ["text"] = echo, ["logprobs"] = null, ["finish_reason"] = null });
                await foreach (var t in handles[i].Tokens.ReadAllAsync(abort))
                {
                    var choice = new JsonObject { ["index"] = i };
                    var lp = t.Logprob is { } l && shape.Logprobs ? new[] { l } : null;
                    if (shape.Chat)
                    {
                        choice["delta"] = new JsonObject { ["content"] = t.TextDelta ?? "" };
                        choice["logprobs"] = lp is null ? null : ChatLogprobs(lp);
                    }
                    else
                    {
                        choice["text"] = t.TextDelta ?? "";
                        choice["logprobs"] = lp is null ? null : CompletionLogprobs(lp, offset);
                        offset += (t.TextDelta ?? "").Length;
                    }
                    choice["finish_reason"] = null;
                    if (shape.ReturnIds) choice["token_ids"] = new JsonArray(t.TokenId);
                    await Send(choice);
                }
                var result = await handles[i].Completion;
                results.Add(result);
                var last = new JsonObject { ["index"] = i };
                if (shape.Chat) last["delta"] = new JsonObject();
                else last["text"] = "";
                last["logprobs"] = null;
                last["finish_reason"] = Reason(result.Reason);
                if (shape.ReturnIds) last["prompt_token_ids"] = Ids(result.PromptIds);
                await Send(last);
            }
            var (prompt, completion) = Counts(results, shape.N);
            Usage(ctx, prompt, completion);
            // stream_options.include_usage: one more chunk, with no choices and the whole request's usage.
            if (shape.IncludeUsage) await Send(null, UsageBody(prompt, completion));
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

    // ---- logprobs in OpenAI's two shapes ----

    /// <summary>The text a token adds on its own (its "token" in logprobs).</summary>
    string TokenText(int id) => engine.Tokenizer is null ? id.ToString(CultureInfo.InvariantCulture) : engine.Decode(new[] { id });

    JsonObject TokenEntry(int id, float logprob)
    {
        var text = TokenText(id);
        return new JsonObject { ["token"] = text, ["logprob"] = logprob, ["bytes"] = new JsonArray(Encoding.UTF8.GetBytes(text).Select(b => (JsonNode)(int)b).ToArray()) };
    }

    /// <summary>Chat: {"content": [{token, logprob, bytes, top_logprobs: [{token, logprob, bytes}]}], "refusal": null}.</summary>
    JsonObject ChatLogprobs(IEnumerable<TokenLogprob> logprobs)
    {
        var content = new JsonArray();
        foreach (var lp in logprobs)
        {
            var entry = TokenEntry(lp.TokenId, lp.Logprob);
            entry["top_logprobs"] = new JsonArray(lp.Top.Select(t => (JsonNode)TokenEntry(t.TokenId, t.Logprob)).ToArray());
            content.Add(entry);
        }
        return new JsonObject { ["content"] = content, ["refusal"] = null };
    }

    /// <summary>Completions: {"tokens", "token_logprobs", "top_logprobs": [{token: logprob}], "text_offset"}.</summary>
    JsonObject CompletionLogprobs(IEnumerable<TokenLogprob> logprobs, int offset)
    {
        JsonArray tokens = new(), values = new(), tops = new(), offsets = new();
        foreach (var lp in logprobs)
        {
            var text = TokenText(lp.TokenId);
            tokens.Add(text);
            values.Add(lp.Logprob);
            var top = new JsonObject();
            foreach (var (id, logprob) in lp.Top) top[TokenText(id)] = logprob;
            tops.Add(top);
            offsets.Add(offset);
            offset += text.Length;
        }
        return new JsonObject { ["tokens"] = tokens, ["token_logprobs"] = values, ["top_logprobs"] = tops, ["text_offset"] = offsets };
    }

    // ---- parsing ----

    string ModelOf(HttpContext ctx, JsonObject body)
    {
        var model = Str(body, "model") ?? throw ServingException.BadRequest("model is required (the base model's name or an adapter's)", "model");
        ctx.Items[AccessLog.ModelKey] = model;
        if (!engine.Serves(model))
            throw new ServingException(404, $"The model `{model}` does not exist. Serving: {string.Join(", ", engine.ModelNames())}", "model", "model_not_found");
        return model;
    }

    /// <summary>OpenAI's prompt (or embeddings input): a string, a list of strings, a list of token ids, or a list of such lists.</summary>
    List<IReadOnlyList<int>> Prompts(JsonNode? node, string field = "prompt")
    {
        static bool IsInt(JsonNode? n) => n is JsonValue v && v.GetValueKind() == JsonValueKind.Number;
        var result = new List<IReadOnlyList<int>>();
        switch (node)
        {
            case JsonValue v when v.GetValueKind() == JsonValueKind.String:
                result.Add(engine.Encode(v.GetValue<string>(), field));
                break;
            case JsonArray a when a.Count > 0 && a.All(IsInt):
                result.Add(TokenIds(a, field));
                break;
            case JsonArray a when a.Count > 0 && a.All(x => x is JsonValue s && s.GetValueKind() == JsonValueKind.String):
                CheckCount(a.Count);
                result.AddRange(a.Select(x => engine.Encode(x!.GetValue<string>(), field)));
                break;
            case JsonArray a when a.Count > 0 && a.All(x => x is JsonArray inner && inner.Count > 0 && inner.All(IsInt)):
                CheckCount(a.Count);
                result.AddRange(a.Select(x => TokenIds((JsonArray)x!, field)));
                break;
            default:
                throw ServingException.BadRequest($"{field} must be a string, a list of strings, a non-empty list of token ids, or a list of such lists", field);
        }
        return result;

        void CheckCount(int count)
        {
            if (count > engine.Options.MaxBatchSize) throw ServingException.BadRequest($"at most {engine.Options.MaxBatchSize} {field}s per request", field);
        }
    }

    static int[] TokenIds(JsonArray a, string field) => a.Select(x =>
        ((JsonValue)x!).TryGetValue<int>(out var id) ? id : throw ServingException.BadRequest($"token id {x} is not a 32-bit integer", field)).ToArray();

    /// <summary>Chat messages with text content, normalized to {role, content[, name]} for the template; tool calls and non-text parts are refused.</summary>
    static JsonArray Messages(JsonNode? node)
    {
        if (node is not JsonArray messages || messages.Count == 0) throw ServingException.BadRequest("messages must be a non-empty array", "messages");
        var normalized = new JsonArray();
        for (int i = 0; i < messages.Count; i++)
        {
            if (messages[i] is not JsonObject o || o["role"] is not JsonValue role || role.GetValueKind() != JsonValueKind.String)
                throw ServingException.BadRequest($"messages[{i}] needs a string role", "messages");
            var r = role.GetValue<string>();
            if (r is not ("system" or "developer" or "user" or "assistant"))
                throw ServingException.BadRequest($"messages[{i}].role '{r}' is not supported (system, developer, user, assistant; tools are not supported)", "messages");
            foreach (var (key, value) in o)
                if (key is not ("role" or "content" or "name") && !(key is "refusal" or "tool_calls" && value is null || key == "tool_calls" && value is JsonArray { Count: 0 }))
                    throw ServingException.BadRequest($"messages[{i}].{key} is not supported", "messages");
            var m = new JsonObject { ["role"] = r == "developer" ? "system" : r, ["content"] = Content(o["content"], i) };
            if (Str(o, "name") is { } name) m["name"] = name;
            normalized.Add(m);
        }
        return normalized;
    }

    /// <summary>Message content: a string or OpenAI's list of {"type": "text", "text": ...} parts.</summary>
    static string Content(JsonNode? node, int index) => node switch
    {
        null => "",
        JsonValue v when v.GetValueKind() == JsonValueKind.String => v.GetValue<string>(),
        JsonArray parts => string.Concat(parts.Select(p => p is JsonObject o && Str(o, "type") == "text" && Str(o, "text") is { } t ? t
            : throw ServingException.BadRequest($"messages[{index}]: only text content parts are supported", "messages"))),
        _ => throw ServingException.BadRequest($"messages[{index}].content must be a string or a list of text parts", "messages"),
    };

    /// <summary>response_format: text (the default) or json_object; json_schema is refused.</summary>
    static bool JsonObjectFormat(JsonNode? node) => node switch
    {
        null => false,
        JsonObject o when Str(o, "type") == "text" && o.Count == 1 => false,
        JsonObject o when Str(o, "type") == "json_object" && o.Count == 1 => true,
        JsonObject o when Str(o, "type") == "json_schema" => throw ServingException.BadRequest("response_format json_schema is not supported; use {\"type\": \"json_object\"}", "response_format"),
        _ => throw ServingException.BadRequest("response_format must be {\"type\": \"text\"} or {\"type\": \"json_object\"}", "response_format"),
    };

    /// <summary>OpenAI/vLLM sampling fields to generation options: temperature 0 is greedy; top_k, repetition_penalty and ignore_eos are vLLM's (top_k -1 or 0: off).</summary>
    static GenerationOptions Sampling(JsonObject body, int defaultMaxTokens)
    {
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
        ulong? seed = body["seed"] is null ? null : body["seed"] is JsonValue sv && sv.GetValueKind() == JsonValueKind.Number && sv.TryGetValue<long>(out var s) ? unchecked((ulong)s) : throw ServingException.BadRequest("seed must be a 64-bit integer", "seed");
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

    static void Usage(HttpContext ctx, int prompt, int completion) => ctx.Items[AccessLog.UsageKey] = (prompt, completion);

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
