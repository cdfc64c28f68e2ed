using System.Runtime.CompilerServices;
using System.Text.Json.Nodes;
using Microsoft.Extensions.AI;

namespace PeftSharp.Inference.Serving;

/// <summary>
/// Microsoft.Extensions.AI's <see cref="IChatClient"/> over a <see cref="ServingEngine"/>, in process: the
/// base model or any adapter (<see cref="ChatOptions.ModelId"/>, else <paramref name="defaultModel"/>), batched
/// with every other request the engine serves. Messages go through the model's chat template.
/// </summary>
public sealed class PeftChatClient(ServingEngine engine, string? defaultModel = null) : IChatClient
{
    readonly string _defaultModel = defaultModel ?? engine.ModelName;

    public async Task<ChatResponse> GetResponseAsync(IEnumerable<ChatMessage> messages, ChatOptions? options = null, CancellationToken cancellationToken = default)
    {
        var (request, model) = Build(messages, options);
        var result = await engine.GenerateAsync(request, cancellationToken).ConfigureAwait(false);
        cancellationToken.ThrowIfCancellationRequested();
        return new ChatResponse(new ChatMessage(ChatRole.Assistant, result.Text ?? ""))
        {
            ModelId = model,
            FinishReason = Reason(result.Reason),
            Usage = new UsageDetails { InputTokenCount = result.PromptIds.Length, OutputTokenCount = result.Tokens.Length, TotalTokenCount = result.PromptIds.Length + result.Tokens.Length },
        };
    }

    public async IAsyncEnumerable<ChatResponseUpdate> GetStreamingResponseAsync(IEnumerable<ChatMessage> messages, ChatOptions? options = null, [EnumeratorCancellation] CancellationToken cancellationToken = default)
    {
        var (request, model) = Build(messages, options);
        var handle = engine.Submit(request, cancellationToken);
        var id = "chatcmpl-" + Guid.NewGuid().ToString("N");
        await foreach (var token in handle.Tokens.ReadAllAsync(cancellationToken).ConfigureAwait(false))
            if (!string.IsNullOrEmpty(token.TextDelta))
                yield return new ChatResponseUpdate(ChatRole.Assistant, token.TextDelta) { ModelId = model, ResponseId = id };
        var result = await handle.Completion.ConfigureAwait(false);
        yield return new ChatResponseUpdate { Role = ChatRole.Assistant, ModelId = model, ResponseId = id, FinishReason = Reason(result.Reason) };
    }

    (ServingRequest Request, string Model) Build(IEnumerable<ChatMessage> messages, ChatOptions? options)
    {
        var model = options?.ModelId ?? _defaultModel;
        var list = new JsonArray();
        foreach (var m in messages) list.Add(new JsonObject { ["role"] = m.Role.Value, ["content"] = m.Text });
        var prompt = engine.EncodeChat(list);
        var generation = ChatOptionsMapping.ToGenerationOptions(options, Math.Max(1, Math.Min(engine.Options.MaxTokensLimit, engine.ContextLength - prompt.Count)));
        return (new ServingRequest { PromptIds = prompt, Adapter = model, Options = generation }, model);
    }

    static ChatFinishReason Reason(FinishReason r) => r == FinishReason.Length ? ChatFinishReason.Length : ChatFinishReason.Stop;

    public object? GetService(Type serviceType, object? serviceKey = null) =>
        serviceKey is not null ? null
        : serviceType == typeof(ChatClientMetadata) ? new ChatClientMetadata("PeftSharp", null, _defaultModel)
        : serviceType.IsInstanceOfType(this) ? this
        : serviceType.IsInstanceOfType(engine) ? engine
        : null;

    /// <summary>The engine belongs to the caller (it may serve HTTP at the same time) and is not disposed.</summary>
    public void Dispose() { }
}
