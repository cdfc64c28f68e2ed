using PeftSharp.IO;
using System.Text.Json;
using System.Text.Json.Nodes;

namespace PeftSharp.Tokenization.ChatTemplates;

/// <summary>transformers' <c>apply_chat_template</c> for a model folder: its template, its special-token variables.</summary>
public static class ChatPrompt
{
    /// <summary>
    /// Renders <paramref name="messages"/> with the folder's chat template. <paramref name="template"/> picks a named
    /// template of the folder, or a built-in one (chatml, llama3, llama2, alpaca) for folders without a template.
    /// Variables: the tokenizer's special tokens (bos_token, eos_token, ...), then <paramref name="extra"/>.
    /// </summary>
    public static string Render(string dir, JsonArray messages, bool addGenerationPrompt = false, JsonObject? extra = null, string? template = null)
    {
        dir = HfHubCache.ResolveFolder(dir);
        var chat = Resolve(dir, template);
        var vars = SpecialTokens(dir);
        foreach (var (k, v) in extra ?? new JsonObject()) vars[k] = v?.DeepClone();
        return chat.Render(messages, addGenerationPrompt, vars);
    }

    /// <summary>Renders and encodes as <c>apply_chat_template(tokenize=True)</c>: the template carries the special tokens, so none are added.</summary>
    public static IReadOnlyList<int> Encode(HfTokenizer tokenizer, JsonArray messages, bool addGenerationPrompt = true, JsonObject? extra = null, string? template = null) =>
        tokenizer.Encode(Render(tokenizer.Directory, messages, addGenerationPrompt, extra, template), addSpecialTokens: false);

    static ChatTemplate Resolve(string dir, string? template)
    {
        bool builtIn = template is not null && ChatTemplate.BuiltInNames.Contains(template.ToLowerInvariant());
        var own = builtIn ? null : ChatTemplate.FromFolder(dir, template);
        if (own is not null) return own;
        if (builtIn) return ChatTemplate.BuiltIn(template!);
        throw new PeftFormatException(dir, $"the folder has no chat template (chat_template.jinja or tokenizer_config.json's chat_template); choose a built-in one: {string.Join(", ", ChatTemplate.BuiltInNames)}");
    }

    static JsonObject SpecialTokens(string dir)
    {
        var path = Path.Combine(dir, "tokenizer_config.json");
        if (!File.Exists(path)) return new JsonObject();
        try
        {
            return JsonNode.Parse(File.ReadAllText(path)) is JsonObject config ? ChatTemplate.SpecialTokenVariables(config) : new JsonObject();
        }
        catch (JsonException e) { throw new PeftFormatException(path, $"not valid JSON: {e.Message}", e); }
    }
}
