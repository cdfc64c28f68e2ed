using System.Text.Json.Nodes;
using PeftSharp.Tokenization;
using PeftSharp.Tokenization.ChatTemplates;

namespace PeftSharp.Training.Data;

/// <summary>
/// Turns a conversation into training text: a LLaMA-Factory template (<see cref="LlamaFactory"/>, encoded slot by slot
/// exactly as LLaMA-Factory does) or a Jinja chat template, whose <see cref="Render"/> must render a conversation
/// prefix as a string prefix of the longer conversation so prompt and answer segments can be cut apart and masked.
/// </summary>
public sealed class PromptTemplate
{
    public required string Name { get; init; }
    /// <summary>(messages, addGenerationPrompt) → text.</summary>
    public required Func<IReadOnlyList<ChatMessage>, bool, string> Render { get; init; }
    /// <summary>For Jinja templates without an end-of-turn marker: append the tokenizer's eos after each answer.</summary>
    public bool AppendEos { get; init; }
    /// <summary>Prepend the tokenizer's bos (when it adds one); chat templates write their own special tokens.</summary>
    public bool AddBos { get; init; }
    /// <summary>Set for LLaMA-Factory's named templates: the training rows come from its own encoding.</summary>
    public LlamaFactoryTemplate? LlamaFactory { get; init; }

    /// <summary>
    /// LLaMA-Factory's <c>template</c> key: one of its template names (empty, default, alpaca, chatml, qwen, qwen3,
    /// qwen3_nothink, llama2, llama3, mistral), or auto/null: the model folder's own chat template, else empty.
    /// <paramref name="recipe"/> applies default_system, tool_format and the thinking switches.
    /// </summary>
    public static PromptTemplate Resolve(string? name, string? modelDir, HfTokenizer? tokenizer, Recipes.RecipeSettings? recipe = null)
    {
        if (name is null or "auto" or "chat")
        {
            var own = modelDir is null ? null : ChatTemplate.FromFolder(modelDir);
            if (own is not null) return FromChat("chat", own, tokenizer);
            if (name == "chat") throw new PeftConfigException($"template 'chat': the model folder '{modelDir}' has no chat template");
            name = "empty";
        }
        if (LlamaFactoryTemplate.Find(name) is { } lf)
        {
            if (recipe is not null) lf = lf.With(recipe.DefaultSystem, recipe.ToolFormat, recipe.EnableThinking, recipe.PreserveThinking);
            return FromLlamaFactory(lf, tokenizer);
        }
        if (ChatTemplate.BuiltInNames.Contains(name.ToLowerInvariant())) return FromChat(name, ChatTemplate.BuiltIn(name), tokenizer);
        throw new PeftConfigException($"template '{name}' is not known (supported: auto, {string.Join(", ", BuiltInNames.Concat(ChatTemplate.BuiltInNames).Distinct())})");
    }

    /// <summary>A Jinja chat template rendered with the tokenizer's bos/eos strings, as apply_chat_template does.</summary>
    public static PromptTemplate FromChat(string name, ChatTemplate template, HfTokenizer? tokenizer) => new()
    {
        Name = name,
        Render = (messages, gen) => template.Render(
            new JsonArray(messages.Select(m => (JsonNode)new JsonObject { ["role"] = m.Role, ["content"] = m.Content }).ToArray()),
            gen, tokenizer?.BosToken, tokenizer?.EosToken),
    };

    static PromptTemplate FromLlamaFactory(LlamaFactoryTemplate t, HfTokenizer? tokenizer) => new()
    {
        Name = t.Name,
        LlamaFactory = t,
        Render = (messages, _) =>
        {
            var system = messages.FirstOrDefault(m => m.Role == "system")?.Content;
            return t.Render(messages.Where(m => m.Role != "system").ToList(), system, null, tokenizer?.BosToken, tokenizer?.EosToken);
        },
    };

    public static IReadOnlyList<string> BuiltInNames => LlamaFactoryTemplate.Names.ToList();

    /// <summary>A LLaMA-Factory template by name (rendered without a tokenizer's bos/eos strings), or null.</summary>
    public static PromptTemplate? BuiltIn(string name) => LlamaFactoryTemplate.Find(name.ToLowerInvariant()) is { } t ? FromLlamaFactory(t, null) : null;
}
