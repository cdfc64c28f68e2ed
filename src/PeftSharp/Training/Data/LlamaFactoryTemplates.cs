using System.Text;
using PeftSharp.Tokenization;

namespace PeftSharp.Training.Data;

/// <summary>One piece of a LLaMA-Factory template slot: text (with {{content}}), or the tokenizer's bos/eos token.</summary>
public abstract record Slot
{
    public sealed record Text(string Value) : Slot;
    public sealed record Bos : Slot;
    public sealed record Eos : Slot;
    public static implicit operator Slot(string s) => new Text(s);
}

/// <summary>
/// A chat template as LLaMA-Factory defines it (data/template.py): slot lists for user, assistant, system,
/// function-call, observation turns and a prefix. Turn 0 carries prefix + system (+ tool list); each string slot is
/// tokenized on its own (add_special_tokens=False), bos/eos slots become the token ids. Llama-2-style templates fuse
/// the system text into the first user turn; reasoning templates (qwen3) handle &lt;think&gt; blocks.
/// </summary>
public sealed record LlamaFactoryTemplate
{
    public required string Name { get; init; }
    public required Slot[] User { get; init; }
    public required Slot[] Assistant { get; init; }
    public required Slot[] System { get; init; }
    public required Slot[] Function { get; init; }
    public required Slot[] Observation { get; init; }
    public Slot[] Prefix { get; init; } = [];
    public string ToolFormat { get; init; } = "default";
    public string DefaultSystem { get; init; } = "";
    public IReadOnlyList<string> StopWords { get; init; } = [];
    /// <summary>Llama2Template: the system (and tool) text goes inside the first user turn.</summary>
    public bool FuseSystem { get; init; }
    /// <summary>ReasoningTemplate: an answer without a thought gets the empty thought (trained when thinking is enabled).</summary>
    public bool Reasoning { get; init; }
    public bool EnableThinking { get; init; } = true;
    public bool PreserveThinking { get; init; }
    public (string Open, string Close) ThoughtWords { get; init; } = ("<think>\n", "\n</think>\n\n");
    public (string Open, string Close) ToolCallWords { get; init; } = ("<tool_call>", "</tool_call>");

    static Slot[] S(params Slot[] s) => s;

    // register_template's defaults: user/system "{{content}}", assistant "{{content}}" + eos, function = assistant slots.
    static LlamaFactoryTemplate Register(string name, Slot[]? user = null, Slot[]? assistant = null, Slot[]? system = null, Slot[]? function = null,
        Slot[]? observation = null, Slot[]? prefix = null, string tools = "default", string defaultSystem = "", string[]? stop = null,
        bool fuse = false, bool reasoning = false, string? functionFormat = null)
    {
        var u = user ?? S("{{content}}");
        var a = assistant ?? S("{{content}}", new Slot.Eos());
        return new LlamaFactoryTemplate
        {
            Name = name, User = u, Assistant = a, System = system ?? S("{{content}}"), Function = function ?? a,
            Observation = observation ?? u, Prefix = prefix ?? [], ToolFormat = tools, DefaultSystem = defaultSystem,
            StopWords = stop ?? [], FuseSystem = fuse, Reasoning = reasoning,
        };
    }

    static LlamaFactoryTemplate Qwen(string name, string defaultSystem = "", bool reasoning = false) => Register(name,
        user: S("<|im_start|>user\n{{content}}<|im_end|>\n<|im_start|>assistant\n"),
        assistant: S("{{content}}<|im_end|>\n"),
        system: S("<|im_start|>system\n{{content}}<|im_end|>\n"),
        function: S("{{content}}<|im_end|>\n"),
        observation: S("<|im_start|>user\n<tool_response>\n{{content}}\n</tool_response><|im_end|>\n<|im_start|>assistant\n"),
        tools: "qwen", defaultSystem: defaultSystem, stop: ["<|im_end|>"], reasoning: reasoning);

    static readonly Dictionary<string, LlamaFactoryTemplate> Registry = new[]
    {
        Register("empty", assistant: S("{{content}}")),
        Register("default", user: S("Human: {{content}}", new Slot.Eos(), "\nAssistant:"), assistant: S("{{content}}", new Slot.Eos(), "\n"),
            system: S("System: {{content}}", new Slot.Eos(), "\n")),
        Register("alpaca", user: S("### Instruction:\n{{content}}\n\n### Response:\n"), assistant: S("{{content}}", new Slot.Eos(), "\n\n"),
            defaultSystem: "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n"),
        Register("chatml", user: S("<|im_start|>user\n{{content}}<|im_end|>\n<|im_start|>assistant\n"), assistant: S("{{content}}<|im_end|>\n"),
            system: S("<|im_start|>system\n{{content}}<|im_end|>\n"),
            observation: S("<|im_start|>tool\n{{content}}<|im_end|>\n<|im_start|>assistant\n"), stop: ["<|im_end|>", "<|im_start|>"]),
        Qwen("qwen", "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."),
        Qwen("qwen3", reasoning: true),
        Qwen("qwen3_nothink"),
        Register("llama2", user: S(new Slot.Bos(), "[INST] {{content}} [/INST]"), system: S("<<SYS>>\n{{content}}\n<</SYS>>\n\n"), fuse: true),
        Register("llama3",
            user: S("<|start_header_id|>user<|end_header_id|>\n\n{{content}}<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"),
            assistant: S("{{content}}<|eot_id|>"),
            system: S("<|start_header_id|>system<|end_header_id|>\n\n{{content}}<|eot_id|>"),
            function: S("{{content}}<|eot_id|>"),
            observation: S("<|start_header_id|>ipython<|end_header_id|>\n\n{{content}}<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"),
            tools: "llama3", prefix: S(new Slot.Bos()), stop: ["<|eot_id|>", "<|eom_id|>"]),
        Register("mistral", user: S("[INST] {{content}}[/INST]"), assistant: S(" {{content}}", new Slot.Eos()), system: S("{{content}}\n\n"),
            function: S("[TOOL_CALLS] {{content}}", new Slot.Eos()),
            observation: S("[TOOL_RESULTS] {\"content\": {{content}}}[/TOOL_RESULTS]"), tools: "mistral", prefix: S(new Slot.Bos()), fuse: true),
    }.ToDictionary(t => t.Name);

    public static IReadOnlyCollection<string> Names => Registry.Keys;

    public static LlamaFactoryTemplate? Find(string name) => Registry.GetValueOrDefault(name);

    /// <summary>The template with the recipe's default_system / tool_format / enable_thinking / preserve_thinking applied.</summary>
    public LlamaFactoryTemplate With(string? defaultSystem, string? toolFormat, bool enableThinking, bool preserveThinking) => this with
    {
        DefaultSystem = defaultSystem ?? DefaultSystem,
        ToolFormat = toolFormat ?? ToolFormat,
        // tool_format also resets the function slots to the plain "{{content}}" + eos (as LLaMA-Factory does).
        Function = toolFormat is null ? Function : S("{{content}}", new Slot.Eos()),
        EnableThinking = enableThinking,
        PreserveThinking = preserveThinking,
    };

    // ---- rendering ----

    static IEnumerable<Slot> Apply(Slot[] slots, string content) =>
        slots.Select(s => s is Slot.Text t ? new Slot.Text(ReplaceFirst(t.Value, "{{content}}", content)) : s);

    static string ReplaceFirst(string s, string what, string with)
    {
        int i = s.IndexOf(what, StringComparison.Ordinal);
        return i < 0 ? s : s[..i] + with + s[(i + what.Length)..];
    }

    /// <summary>LLaMA-Factory's Template._encode as slot lists, one per message.</summary>
    public List<List<Slot>> Elements(IReadOnlyList<ChatMessage> messages, string? system, string? tools)
    {
        system = string.IsNullOrEmpty(system) ? DefaultSystem : system;
        var result = new List<List<Slot>>();
        for (int i = 0; i < messages.Count; i++)
        {
            var elements = new List<Slot>();
            string systemText = "";
            if (i == 0)
            {
                elements.AddRange(Prefix);
                if (system.Length > 0 || !string.IsNullOrEmpty(tools))
                {
                    var toolText = string.IsNullOrEmpty(tools) ? "" : ToolFormats.FormatTools(ToolFormat, tools);
                    var applied = Apply(System, system + toolText).ToList();
                    if (FuseSystem) systemText = applied[0] is Slot.Text t ? t.Value : "";
                    else elements.AddRange(applied);
                }
            }
            var m = messages[i];
            elements.AddRange(m.Role switch
            {
                "user" => Apply(User, systemText + m.Content),
                "assistant" => Apply(Assistant, m.Content),
                "observation" => Apply(Observation, m.Content),
                "function" => Apply(Function, ToolFormats.FormatFunction(ToolFormat, m.Content, FuseSystem ? null : ThoughtWords, FuseSystem ? null : ToolCallWords)),
                _ => throw new PeftFormatException("dataset", $"unexpected role '{m.Role}' in a conversation (expected user, assistant, function or observation)"),
            });
            result.Add(elements);
        }
        return result;
    }

    static int[] Ids(IEnumerable<Slot> elements, HfTokenizer tok)
    {
        var ids = new List<int>();
        foreach (var e in elements)
            switch (e)
            {
                case Slot.Text t when t.Value.Length > 0: ids.AddRange(tok.Encode(t.Value, addSpecialTokens: false)); break;
                case Slot.Bos when tok.BosTokenId is int bos: ids.Add(bos); break;
                case Slot.Eos when tok.EosTokenId is int eos: ids.Add(eos); break;
            }
        return ids.ToArray();
    }

    /// <summary>The text of a conversation (bos/eos as the tokenizer's strings), e.g. for a generation prompt.</summary>
    public string Render(IReadOnlyList<ChatMessage> messages, string? system, string? tools, string? bos, string? eos)
    {
        var sb = new StringBuilder();
        foreach (var e in Elements(Prepared(messages, multiturn: true), system, tools).SelectMany(x => x))
            sb.Append(e switch { Slot.Text t => t.Value, Slot.Bos => bos, Slot.Eos => eos, _ => "" });
        return sb.ToString();
    }

    string RemoveThought(string content)
    {
        int a = content.IndexOf(ThoughtWords.Open, StringComparison.Ordinal);
        if (a < 0) return content;
        int b = content.IndexOf(ThoughtWords.Close, a + ThoughtWords.Open.Length, StringComparison.Ordinal);
        if (b < 0) return content;
        return (content[..a] + content[(b + ThoughtWords.Close.Length)..]).TrimStart('\n');
    }

    bool HasThought(string content) =>
        content.Contains(ThoughtWords.Open.Trim(), StringComparison.Ordinal) || content.Contains(ThoughtWords.Close.Trim(), StringComparison.Ordinal);

    List<ChatMessage> Prepared(IReadOnlyList<ChatMessage> messages, bool multiturn, bool discardHistoryCot = false)
    {
        var list = messages.ToList();
        if (!Reasoning) return list;
        for (int i = 1; i < list.Count; i += 2)
            if (!EnableThinking || (discardHistoryCot && i < list.Count - 2)) list[i] = list[i] with { Content = RemoveThought(list[i].Content) };
        return list;
    }

    /// <summary>
    /// encode_multiturn: (prompt ids, answer ids) per turn. A reasoning template adds the empty thought to each answer
    /// that has none: into the answer when thinking is enabled, into the prompt otherwise.
    /// </summary>
    public List<(int[] Source, int[] Target)> EncodeMultiturn(HfTokenizer tok, IReadOnlyList<ChatMessage> messages, string? system, string? tools, bool discardHistoryCot = false)
    {
        var list = Prepared(messages, true, discardHistoryCot);
        var encoded = Elements(list, system, tools).Select(e => Ids(e, tok)).ToList();
        if (Reasoning)
        {
            var thought = tok.Encode(ThoughtWords.Open + ThoughtWords.Close, addSpecialTokens: false).ToArray();
            var turns = discardHistoryCot ? [list.Count - 2] : Enumerable.Range(0, list.Count / 2).Select(t => 2 * t);
            foreach (int i in turns)
                if (!HasThought(list[i + 1].Content))
                {
                    if (!EnableThinking) encoded[i] = [.. encoded[i], .. thought];
                    else encoded[i + 1] = [.. thought, .. encoded[i + 1]];
                }
        }
        return Enumerable.Range(0, encoded.Count / 2).Select(t => (encoded[2 * t], encoded[2 * t + 1])).ToList();
    }
}
