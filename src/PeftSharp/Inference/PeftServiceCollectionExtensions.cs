using Microsoft.Extensions.AI;
using PeftSharp.Inference;
using TorchSharp;
using static TorchSharp.torch;

namespace Microsoft.Extensions.DependencyInjection;

/// <summary>What <see cref="PeftServiceCollectionExtensions.AddPeftChatClient"/> loads.</summary>
public sealed class PeftChatClientOptions
{
    /// <summary>Hugging Face model folder (config.json, safetensors, tokenizer.json).</summary>
    public required string ModelDir { get; set; }
    /// <summary>Adapters to load, by name; the first is active and ChatOptions.ModelId picks another ("base": none).</summary>
    public List<(string Name, string Dir)> Adapters { get; } = new();
    public Device? Device { get; set; }
    public ScalarType DType { get; set; } = ScalarType.Float32;
    /// <summary>A named template of the folder or a built-in one (chatml, llama3, llama2, alpaca); null: the folder's own.</summary>
    public string? ChatTemplate { get; set; }
}

/// <summary>Registers PeftSharp's in-process chat client for Microsoft.Extensions.AI consumers.</summary>
public static class PeftServiceCollectionExtensions
{
    /// <summary>
    /// Adds a singleton <see cref="IChatClient"/> over <paramref name="modelDir"/> (a <see cref="LocalChatClient"/>), loaded on
    /// first use and disposed with the service provider.
    /// </summary>
    public static IServiceCollection AddPeftChatClient(this IServiceCollection services, string modelDir, Action<PeftChatClientOptions>? configure = null)
    {
        var options = new PeftChatClientOptions { ModelDir = modelDir };
        configure?.Invoke(options);
        return services.AddSingleton<IChatClient>(_ =>
            LocalChatClient.FromFolder(options.ModelDir, options.Adapters, options.Device, options.DType, options.ChatTemplate));
    }
}
