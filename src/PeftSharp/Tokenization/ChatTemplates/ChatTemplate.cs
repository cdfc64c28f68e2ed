using PeftSharp.IO;
using System.Text.Json;
using System.Text.Json.Nodes;
using PeftSharp.Tokenization.ChatTemplates.Jinja;

namespace PeftSharp.Tokenization.ChatTemplates;

/// <summary>
/// A Hugging Face chat template (the Jinja text in tokenizer_config.json's <c>chat_template</c>), parsed once and
/// rendered as transformers' <c>apply_chat_template(..., tokenize=False)</c> does: Jinja2 with trim_blocks and
/// lstrip_blocks, HF's <c>tojson</c>, <c>raise_exception</c> and <c>strftime_now</c>, and the variables
/// <c>messages</c>, <c>tools</c>, <c>documents</c>, <c>add_generation_prompt</c> plus any extra ones
/// (special tokens such as <c>bos_token</c>, <c>enable_thinking</c>, ...).
/// Constructs outside the supported Jinja subset raise <see cref="ChatTemplateException"/> naming them.
/// </summary>
public sealed class ChatTemplate
{
    private readonly List<Node> _body;
    private readonly JsonObject? _defaults;

    /// <summary>The Jinja source.</summary>
    public string Source { get; }

    /// <summary>The clock behind <c>strftime_now</c> (local time, as Python's datetime.now()).</summary>
    public Func<DateTime> Clock { get; init; } = () => DateTime.Now;

    /// <exception cref="ChatTemplateException">The template has a syntax error or an unsupported tag.</exception>
    public ChatTemplate(string source) : this(source, null) { }

    private ChatTemplate(string source, JsonObject? defaults)
    {
        Source = source ?? throw new ArgumentNullException(nameof(source));
        _body = Guard("parsing", () => Parser.Parse(source));
        _defaults = defaults;
    }

    /// <summary>Renders a conversation. <paramref name="extra"/> holds further template variables: special tokens
    /// (<c>bos_token</c>, <c>eos_token</c>, ...), <c>tools</c>, <c>documents</c>, <c>enable_thinking</c>, ...</summary>
    public string Render(JsonArray messages, bool addGenerationPrompt = false, JsonObject? extra = null)
    {
        ArgumentNullException.ThrowIfNull(messages);
        var vars = new Dictionary<string, object?>();
        foreach (var source in new[] { _defaults, extra })
            if (source is not null)
                foreach (var (k, v) in source)
                {
                    if (k is "messages" or "add_generation_prompt")
                        throw new ChatTemplateException($"'{k}' cannot be passed as an extra variable; use the Render parameter");
                    vars[k] = Py.FromJson(v);
                }
        vars["messages"] = Py.FromJson(messages);
        vars["add_generation_prompt"] = addGenerationPrompt;
        // transformers always passes these two, as None when absent.
        vars.TryAdd("tools", null);
        vars.TryAdd("documents", null);
        return Guard("rendering", () => new Interpreter(Clock).Render(_body, vars));
    }

    // A bug in the interpreter must surface as a PeftSharp error naming the template, not as a crash.
    private static T Guard<T>(string stage, Func<T> body)
    {
        try { return body(); }
        catch (Exception e) when (e is not (PeftSharpException or OutOfMemoryException or OperationCanceledException))
        {
            throw new ChatTemplateException($"internal error while {stage} the template ({e.GetType().Name}: {e.Message})");
        }
    }

    /// <summary>Render with the tokenizer's BOS/EOS strings as <c>bos_token</c>/<c>eos_token</c> (null = not passed).</summary>
    public string Render(JsonArray messages, bool addGenerationPrompt, string? bosToken, string? eosToken, JsonObject? extra = null)
    {
        var vars = extra is null ? new JsonObject() : (JsonObject)extra.DeepClone();
        if (bosToken is not null) vars["bos_token"] = bosToken;
        if (eosToken is not null) vars["eos_token"] = eosToken;
        return Render(messages, addGenerationPrompt, vars);
    }

    /// <summary>The names <see cref="BuiltIn"/> accepts.</summary>
    public static IReadOnlyList<string> BuiltInNames { get; } = ["chatml", "llama3", "llama2", "alpaca"];

    /// <summary>A conventional template for folders whose tokenizer has none: chatml, llama3, llama2 or alpaca.
    /// bos_token/eos_token default to the family's usual strings; pass them in <c>extra</c> to override.</summary>
    public static ChatTemplate BuiltIn(string name) => name.ToLowerInvariant() switch
    {
        "chatml" => new ChatTemplate(BuiltInTemplates.ChatML, null),
        "llama3" => new ChatTemplate(BuiltInTemplates.Llama3, new JsonObject { ["bos_token"] = "<|begin_of_text|>", ["eos_token"] = "<|eot_id|>" }),
        "llama2" => new ChatTemplate(BuiltInTemplates.Llama2, new JsonObject { ["bos_token"] = "<s>", ["eos_token"] = "</s>" }),
        "alpaca" => new ChatTemplate(BuiltInTemplates.Alpaca, new JsonObject { ["eos_token"] = "" }),
        _ => throw new PeftConfigException($"unknown built-in chat template '{name}': expected one of {string.Join(", ", BuiltInNames)}"),
    };

    /// <summary>
    /// The template a model folder ships: chat_template.jinja, else chat_template.json, else tokenizer_config.json's
    /// <c>chat_template</c> (a string, or a list of {name, template} from which <paramref name="name"/> (default
    /// "default") is taken). Null when the folder has none.
    /// </summary>
    public static ChatTemplate? FromFolder(string dir, string? name = null)
    {
        dir = HfHubCache.ResolveFolder(dir);
        // Parsed once per folder and file version (a server asks for every request); bounded, for long-lived hosts.
        var key = string.Join("|", new[] { Path.GetFullPath(dir), name ?? "" }.Concat(TemplateFiles.Select(f =>
        {
            var info = new FileInfo(Path.Combine(dir, f));
            return info.Exists ? $"{info.LastWriteTimeUtc.Ticks}:{info.Length}" : "-";
        })));
        if (Cache.TryGetValue(key, out var cached)) return cached;
        var template = Load(dir, name);
        if (Cache.Count >= 256) Cache.Clear();
        Cache[key] = template;
        return template;
    }

    private static readonly string[] TemplateFiles = ["chat_template.jinja", "chat_template.json", "tokenizer_config.json"];
    private static readonly System.Collections.Concurrent.ConcurrentDictionary<string, ChatTemplate?> Cache = new();

    private static ChatTemplate? Load(string dir, string? name)
    {
        var jinja = Path.Combine(dir, "chat_template.jinja");
        if (File.Exists(jinja)) return new ChatTemplate(File.ReadAllText(jinja));
        foreach (var file in new[] { "chat_template.json", "tokenizer_config.json" })
        {
            var path = Path.Combine(dir, file);
            if (!File.Exists(path)) continue;
            JsonObject? config;
            try { config = JsonNode.Parse(File.ReadAllText(path)) as JsonObject; }
            catch (JsonException e) { throw new PeftFormatException(path, $"not valid JSON: {e.Message}", e); }
            var source = SelectTemplate(config?["chat_template"], path, name);
            if (source is not null) return new ChatTemplate(source);
        }
        return null;
    }

    private static string? SelectTemplate(JsonNode? node, string path, string? name)
    {
        switch (node)
        {
            case null: return null;
            case JsonValue v when v.GetValueKind() == JsonValueKind.String: return v.GetValue<string>();
            case JsonArray list:
            {
                var wanted = name ?? "default";
                foreach (var item in list)
                    if (item?["name"]?.GetValue<string>() == wanted) return item["template"]?.GetValue<string>();
                var names = string.Join(", ", list.Select(i => i?["name"]?.ToJsonString()));
                throw new PeftFormatException(path, $"chat_template has no template named '{wanted}' (has {names})");
            }
        }
        throw new PeftFormatException(path, $"chat_template must be a string or a list of {{name, template}}, found {node.GetValueKind()}");
    }

    /// <summary>
    /// The variables transformers adds from the tokenizer's special tokens (its <c>special_tokens_map</c>):
    /// bos/eos/unk/sep/pad/cls/mask_token and additional_special_tokens, where tokenizer_config.json sets them.
    /// </summary>
    public static JsonObject SpecialTokenVariables(JsonObject tokenizerConfig)
    {
        var vars = new JsonObject();
        foreach (var key in new[] { "bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token" })
            if (TokenText(tokenizerConfig[key]) is { } text) vars[key] = text;
        if (tokenizerConfig["additional_special_tokens"] is JsonArray extra && extra.Count > 0)
            vars["additional_special_tokens"] = new JsonArray(extra.Select(t => (JsonNode?)TokenText(t)).ToArray());
        return vars;
    }

    // A token is a string or an AddedToken object {"content": ...}.
    private static string? TokenText(JsonNode? node) => node switch
    {
        JsonValue v when v.GetValueKind() == JsonValueKind.String => v.GetValue<string>(),
        JsonObject o => o["content"]?.GetValue<string>(),
        _ => null,
    };
}
