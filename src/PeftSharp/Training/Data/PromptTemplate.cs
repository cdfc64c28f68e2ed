using System.Text;
using System.Text.Json.Nodes;
using PeftSharp.Tokenization;
using PeftSharp.Tokenization.ChatTemplates;

namespace PeftSharp.Training.Data;

/// <summary>
/// Turns a conversation into text. <see cref="Render"/> must render a conversation prefix as a string prefix of the
/// longer conversation, so prompt and response segments can be cut apart and masked. Built-in text templates have no
/// end-of-turn marker, so the encoder appends the tokenizer's eos after each response (<see cref="AppendEos"/>).
/// </summary>
public sealed class PromptTemplate
{
    public required string Name { get; init; }
    /// <summary>(messages, addGenerationPrompt) → text.</summary>
    public required Func<IReadOnlyList<ChatMessage>, bool, string> Render { get; init; }
    public bool AppendEos { get; init; }
    /// <summary>Prepend the tokenizer's bos (when it adds one); chat templates write their own special tokens.</summary>
    public bool AddBos { get; init; } = true;

    /// <summary>
    /// LLaMA-Factory's <c>template</c> key: empty, alpaca or default (built-in text templates), chatml, llama3 or
    /// llama2 (built-in chat templates), or auto/null: the model folder's own chat template, else empty.
    /// </summary>
    public static PromptTemplate Resolve(string? name, string? modelDir, HfTokenizer? tokenizer)
    {
        if (name is null or "auto" or "chat")
        {
            var own = modelDir is null ? null : ChatTemplate.FromFolder(modelDir);
            if (own is not null) return FromChat("chat", own, tokenizer);
            if (name == "chat") throw new PeftConfigException($"template 'chat': the model folder '{modelDir}' has no chat template");
            return BuiltIn("empty")!;
        }
        if (BuiltIn(name) is { } builtIn) return builtIn;
        if (ChatTemplate.BuiltInNames.Contains(name.ToLowerInvariant())) return FromChat(name, ChatTemplate.BuiltIn(name), tokenizer);
        throw new PeftConfigException($"template '{name}' is not known (supported: auto, chat, {string.Join(", ", BuiltInNames.Concat(ChatTemplate.BuiltInNames).Distinct())})");
    }

    /// <summary>A Jinja chat template rendered with the tokenizer's bos/eos strings, as apply_chat_template does.</summary>
    public static PromptTemplate FromChat(string name, ChatTemplate template, HfTokenizer? tokenizer) => new()
    {
        Name = name,
        AddBos = false,
        Render = (messages, gen) => template.Render(
            new JsonArray(messages.Select(m => (JsonNode)new JsonObject { ["role"] = m.Role, ["content"] = m.Content }).ToArray()),
            gen, tokenizer?.BosToken, tokenizer?.EosToken),
    };

    public static readonly IReadOnlyList<string> BuiltInNames = new[] { "empty", "alpaca", "default" };

    public static PromptTemplate? BuiltIn(string name) => name.ToLowerInvariant() switch
    {
        "empty" or "plain" or "none" => Simple("empty", null, s => s, u => u, ""),
        "alpaca" => Simple("alpaca", "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n",
            s => s + "\n\n", u => $"### Instruction:\n{u}\n\n### Response:\n", ""),
        "default" => Simple("default", null, s => $"System: {s}\n", u => $"Human: {u}\nAssistant:", "\n"),
        _ => null,
    };

    /// <summary>A template in LLaMA-Factory's style: system/user wrappers, the assistant's content as is, then eos.</summary>
    static PromptTemplate Simple(string name, string? defaultSystem, Func<string, string> system, Func<string, string> user, string afterAssistant) => new()
    {
        Name = name,
        AppendEos = true,
        Render = (messages, _) =>
        {
            var sb = new StringBuilder();
            if (defaultSystem is not null && (messages.Count == 0 || messages[0].Role != "system")) sb.Append(defaultSystem);
            foreach (var m in messages)
                sb.Append(m.Role switch
                {
                    "system" => system(m.Content),
                    "user" => user(m.Content),
                    _ => m.Content + afterAssistant,
                });
            return sb.ToString();
        },
    };
}
