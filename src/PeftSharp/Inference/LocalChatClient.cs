using System.Runtime.CompilerServices;
using Microsoft.Extensions.AI;
using PeftSharp.Tuners;
using TorchSharp;
using static TorchSharp.torch;

namespace PeftSharp.Inference;

/// <summary>
/// Microsoft.Extensions.AI's <see cref="IChatClient"/> over one model folder in process, without the serving engine:
/// requests run one at a time through a <see cref="TextGenerator"/> (the folder's chat template and tokenizer).
/// <see cref="ChatOptions.ModelId"/> may name a loaded adapter ("base": none). For many concurrent users, batching
/// and HTTP, use <c>Serving.PeftChatClient</c> over a <c>ServingEngine</c>.
/// </summary>
public sealed class LocalChatClient : IChatClient
{
    readonly TextGenerator _generator;
    readonly SemaphoreSlim _gate = new(1, 1);
    readonly string _modelId;
    readonly bool _ownsModel;

    /// <param name="generator">A generator made with a tokenizer (<see cref="TextGenerator.FromFolder"/> or the text constructor).</param>
    /// <param name="modelId">The name answers report as their model.</param>
    /// <param name="ownsModel">Dispose the generator (and the model it owns) with this client.</param>
    public LocalChatClient(TextGenerator generator, string modelId = "local", bool ownsModel = false)
    {
        _ = generator.Tokenizer; // text needs a tokenizer: fail here rather than at the first request
        _generator = generator; _modelId = modelId; _ownsModel = ownsModel;
    }

    /// <summary>Loads a model folder (and adapters, the first active); the client owns and disposes the model.</summary>
    public static LocalChatClient FromFolder(string modelDir, IEnumerable<(string Name, string Dir)>? adapters = null, Device? device = null,
        ScalarType dtype = ScalarType.Float32, string? chatTemplate = null) =>
        new(TextGenerator.FromFolder(modelDir, adapters, device, dtype, chatTemplate), Path.GetFileName(Path.TrimEndingDirectorySeparator(modelDir)), ownsModel: true);

    public async Task<ChatResponse> GetResponseAsync(IEnumerable<ChatMessage> messages, ChatOptions? options = null, CancellationToken cancellationToken = default)
    {
        var list = messages.ToList();
        await _gate.WaitAsync(cancellationToken).ConfigureAwait(false);
        try
        {
            var generation = ChatOptionsMapping.ToGenerationOptions(options, DefaultMaxTokens(list));
            var text = await Task.Run(() => { using (Select(options)) return _generator.Generate(list, generation); }, cancellationToken).ConfigureAwait(false);
            return new ChatResponse(new ChatMessage(ChatRole.Assistant, text)) { ModelId = options?.ModelId ?? _modelId };
        }
        finally { _gate.Release(); }
    }

    public async IAsyncEnumerable<ChatResponseUpdate> GetStreamingResponseAsync(IEnumerable<ChatMessage> messages, ChatOptions? options = null,
        [EnumeratorCancellation] CancellationToken cancellationToken = default)
    {
        var list = messages.ToList();
        await _gate.WaitAsync(cancellationToken).ConfigureAwait(false);
        try
        {
            var id = "chatcmpl-" + Guid.NewGuid().ToString("N");
            var model = options?.ModelId ?? _modelId;
            var generation = ChatOptionsMapping.ToGenerationOptions(options, DefaultMaxTokens(list));
            using (Select(options))
                await foreach (var piece in _generator.GenerateStreamingAsync(list, generation, cancellationToken).ConfigureAwait(false))
                    yield return new ChatResponseUpdate(ChatRole.Assistant, piece) { ModelId = model, ResponseId = id };
            yield return new ChatResponseUpdate { Role = ChatRole.Assistant, ModelId = model, ResponseId = id, FinishReason = ChatFinishReason.Stop };
        }
        finally { _gate.Release(); }
    }

    int DefaultMaxTokens(IReadOnlyList<ChatMessage> messages)
    {
        int window = _generator.Model.Config.ContextLength;
        return window == int.MaxValue ? 256 : Math.Max(1, window - _generator.EncodeChat(messages).Count);
    }

    /// <summary>Activates the adapter ModelId names for one request (null: keep the active one); "base" turns adapters off.</summary>
    IDisposable? Select(ChatOptions? options)
    {
        var name = options?.ModelId;
        if (name is null || name == _modelId) return null;
        if (_generator.Model is not PeftModel peft)
            throw new PeftSharpException($"ModelId '{name}': this client serves '{_modelId}' without adapters");
        if (name == "base") return peft.DisableAdapters();
        if (!peft.Adapters.Contains(name))
            throw new PeftSharpException($"ModelId '{name}' is not a loaded adapter (loaded: {string.Join(", ", peft.Adapters)}, or base)");
        peft.SetAdapter(name);
        return null;
    }

    public object? GetService(Type serviceType, object? serviceKey = null) =>
        serviceKey is not null ? null
        : serviceType == typeof(ChatClientMetadata) ? new ChatClientMetadata("PeftSharp", null, _modelId)
        : serviceType.IsInstanceOfType(this) ? this
        : serviceType.IsInstanceOfType(_generator) ? _generator
        : null;

    public void Dispose()
    {
        if (_ownsModel) _generator.Dispose();
        _gate.Dispose();
    }
}
