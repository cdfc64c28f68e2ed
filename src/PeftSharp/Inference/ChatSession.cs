using System.Runtime.CompilerServices;
using System.Text;
using Microsoft.Extensions.AI;

namespace PeftSharp.Inference;

/// <summary>
/// A conversation with a model: an optional system message, the turns so far, and the room they take. Before each
/// answer the oldest user/assistant exchanges are dropped until the rendered prompt plus max_new_tokens fits the
/// model's context window (max_position_embeddings); the system message always stays.
/// </summary>
public sealed class ChatSession(TextGenerator generator, GenerationOptions? options = null)
{
    readonly List<ChatMessage> _history = new();

    public TextGenerator Generator { get; } = generator;
    public GenerationOptions Options { get; set; } = options ?? new GenerationOptions { MaxNewTokens = 256 };
    public string? SystemPrompt { get; set; }

    /// <summary>The user and assistant turns kept so far (the system message is <see cref="SystemPrompt"/>).</summary>
    public IReadOnlyList<ChatMessage> History => _history;

    /// <summary>Exchanges dropped so far to stay within the context window.</summary>
    public int DroppedExchanges { get; private set; }

    public void Reset() { _history.Clear(); DroppedExchanges = 0; }

    /// <summary>Sends a user message and returns the whole answer (kept in the history).</summary>
    public string Send(string user)
    {
        var prompt = Prepare(user);
        var answer = Generator.Generate(prompt, Options);
        Commit(user, answer);
        return answer;
    }

    /// <summary>Sends a user message and streams the answer; the history gets the answer once the stream ends.</summary>
    public async IAsyncEnumerable<string> SendStreamingAsync(string user, [EnumeratorCancellation] CancellationToken cancellationToken = default)
    {
        var prompt = Prepare(user);
        var answer = new StringBuilder();
        await foreach (var piece in Generator.GenerateStreamingAsync(prompt, Options, cancellationToken).ConfigureAwait(false))
        {
            answer.Append(piece);
            yield return piece;
        }
        Commit(user, answer.ToString());
    }

    /// <summary>The messages to send: system, the exchanges that fit, then the new user message.</summary>
    List<ChatMessage> Prepare(string user)
    {
        int window = Generator.Model.Config.ContextLength;
        while (true)
        {
            var messages = new List<ChatMessage>();
            if (!string.IsNullOrEmpty(SystemPrompt)) messages.Add(new ChatMessage(ChatRole.System, SystemPrompt));
            messages.AddRange(_history);
            messages.Add(new ChatMessage(ChatRole.User, user));
            if (window == int.MaxValue) return messages;
            int tokens = Generator.EncodeChat(messages).Count;
            if ((long)tokens + Options.MaxNewTokens <= window) return messages;
            if (_history.Count < 2)
                throw new PeftSharpException($"the message needs {tokens} prompt tokens plus max_new_tokens {Options.MaxNewTokens}, more than the model's context window of {window}");
            _history.RemoveRange(0, 2);
            DroppedExchanges++;
        }
    }

    void Commit(string user, string answer)
    {
        _history.Add(new ChatMessage(ChatRole.User, user));
        _history.Add(new ChatMessage(ChatRole.Assistant, answer));
    }
}
