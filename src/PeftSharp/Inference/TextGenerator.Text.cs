using System.Runtime.CompilerServices;
using System.Text.Json.Nodes;
using System.Threading.Channels;
using Microsoft.Extensions.AI;
using PeftSharp.Models;
using PeftSharp.Tokenization;
using PeftSharp.Tokenization.ChatTemplates;
using PeftSharp.Tuners;
using TorchSharp;
using static TorchSharp.torch;

namespace PeftSharp.Inference;

/// <summary>Text in, text out: prompts and chat messages through the model folder's tokenizer and chat template.</summary>
public sealed partial class TextGenerator : IDisposable
{
    readonly HfTokenizer? _tokenizer;
    readonly string? _template;

    /// <summary>
    /// A generator that also takes text: <paramref name="tokenizer"/> encodes prompts and decodes the answer;
    /// chat messages go through the tokenizer folder's chat template, or <paramref name="chatTemplate"/> (a named
    /// template of the folder, or a built-in one: chatml, llama3, llama2, alpaca).
    /// </summary>
    public TextGenerator(ILanguageModel model, HfTokenizer tokenizer, string? chatTemplate = null) : this(model)
    {
        _tokenizer = tokenizer;
        _template = chatTemplate;
    }

    /// <summary>
    /// Loads a model folder (and adapters, the first active) with its tokenizer. The generator owns the model:
    /// dispose it (or <see cref="Model"/>) when done to free the weights.
    /// </summary>
    public static TextGenerator FromFolder(string modelDir, IEnumerable<(string Name, string Dir)>? adapters = null, Device? device = null,
        ScalarType dtype = ScalarType.Float32, string? chatTemplate = null)
    {
        var tokenizer = HfTokenizer.FromFolder(modelDir);
        var model = AutoModel.FromPretrained(modelDir, device, dtype);
        var list = adapters?.ToList() ?? new();
        ILanguageModel lm = list.Count == 0 ? model : PeftModel.LoadWithAdapters(model, list);
        return new TextGenerator(lm, tokenizer, chatTemplate) { _defaults = new GenerationOptions().WithGenerationConfig(modelDir), _ownsModel = true };
    }

    GenerationOptions? _defaults;
    bool _ownsModel;

    /// <summary>Frees the model's weights when this generator loaded it (<see cref="FromFolder"/>); otherwise the model stays the caller's.</summary>
    public void Dispose()
    {
        if (_ownsModel) (_model as IDisposable)?.Dispose();
    }

    /// <summary>The model (or PeftModel) this generator runs.</summary>
    public ILanguageModel Model => _model;

    /// <summary>The tokenizer text goes through; set by the text constructors.</summary>
    public HfTokenizer Tokenizer => _tokenizer ?? throw new PeftSharpException("this TextGenerator was made without a tokenizer; use new TextGenerator(model, tokenizer) or TextGenerator.FromFolder for text");

    /// <summary>Continues <paramref name="prompt"/> (encoded as the tokenizer does, special tokens included) and returns the new text.</summary>
    public string Generate(string prompt, GenerationOptions? options = null) => GenerateText(Encode(prompt), options);

    /// <summary>Answers a conversation: the messages are rendered with the chat template (generation prompt added).</summary>
    public string Generate(IEnumerable<ChatMessage> messages, GenerationOptions? options = null) => GenerateText(EncodeChat(messages), options);

    /// <summary>Streams the continuation of <paramref name="prompt"/> as text pieces, as they are decoded.</summary>
    public IAsyncEnumerable<string> GenerateStreamingAsync(string prompt, GenerationOptions? options = null, CancellationToken cancellationToken = default) =>
        Stream(Encode(prompt), options, cancellationToken);

    /// <summary>Streams the answer to a conversation as text pieces.</summary>
    public IAsyncEnumerable<string> GenerateStreamingAsync(IEnumerable<ChatMessage> messages, GenerationOptions? options = null, CancellationToken cancellationToken = default) =>
        Stream(EncodeChat(messages), options, cancellationToken);

    /// <summary>The prompt ids of a conversation as <see cref="Generate(IEnumerable{ChatMessage}, GenerationOptions?)"/> feeds them.</summary>
    public IReadOnlyList<int> EncodeChat(IEnumerable<ChatMessage> messages)
    {
        var list = new JsonArray();
        foreach (var m in messages) list.Add(new JsonObject { ["role"] = m.Role.Value, ["content"] = m.Text });
        return ChatPrompt.Encode(Tokenizer, list, addGenerationPrompt: true, template: _template);
    }

    IReadOnlyList<int> Encode(string prompt) => Tokenizer.Encode(prompt);

    /// <summary>The options with text decoding on, and the folder's generation_config.json eos/pad where the caller set none.</summary>
    GenerationOptions TextOptions(GenerationOptions? options)
    {
        var o = options ?? new GenerationOptions();
        if (_defaults is { } d) o = o with { EosTokenIds = o.EosTokenIds ?? d.EosTokenIds, PadTokenId = o.PadTokenId ?? d.PadTokenId };
        var tokenizer = Tokenizer;
        return o.Decode is null ? o with { Decode = t => tokenizer.Decode(t, skipSpecialTokens: true) } : o;
    }

    string GenerateText(IReadOnlyList<int> prompt, GenerationOptions? options) =>
        Generate(new[] { prompt }, TextOptions(options)).Texts![0];

    async IAsyncEnumerable<string> Stream(IReadOnlyList<int> prompt, GenerationOptions? options, [EnumeratorCancellation] CancellationToken cancellationToken)
    {
        var o = TextOptions(options);
        var channel = Channel.CreateUnbounded<string>(new UnboundedChannelOptions { SingleReader = true, SingleWriter = true });
        using var stop = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        var token = stop.Token;
        // Decoding is synchronous; it runs on the pool and hands each piece over, stopping when the reader stops.
        var run = Task.Run(() =>
        {
            try
            {
                Generate(new[] { prompt }, o, t =>
                {
                    token.ThrowIfCancellationRequested();
                    if (!string.IsNullOrEmpty(t.TextDelta)) channel.Writer.TryWrite(t.TextDelta);
                });
                channel.Writer.TryComplete();
            }
            catch (Exception e) { channel.Writer.TryComplete(e); }
        }, CancellationToken.None);
        try
        {
            await foreach (var piece in channel.Reader.ReadAllAsync(cancellationToken).ConfigureAwait(false))
                yield return piece;
        }
        finally
        {
            stop.Cancel();
            await run.ConfigureAwait(false);
        }
    }
}
