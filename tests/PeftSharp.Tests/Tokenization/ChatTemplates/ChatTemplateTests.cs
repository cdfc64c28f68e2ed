using System.Text.Json.Nodes;
using PeftSharp.Tokenization.ChatTemplates;

namespace PeftSharp.Tests.Tokenization.ChatTemplates;

/// <summary>The public API, the built-in templates, HF's globals and the errors for unsupported constructs.</summary>
public class ChatTemplateTests
{
    private static JsonArray Conversation(bool withSystem = true)
    {
        var all = JsonNode.Parse("""
            [{"role": "system", "content": "Be brief."}, {"role": "user", "content": " Hi "},
             {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "Bye"}]
            """)!.AsArray();
        if (!withSystem)
        {
            all.RemoveAt(0);
            all.RemoveAt(2);
        }
        return all;
    }

    private static string Render(string template, string contextJson = "{}", bool addGenerationPrompt = false) =>
        new ChatTemplate(template).Render(new JsonArray(), addGenerationPrompt, JsonNode.Parse(contextJson)!.AsObject());

    // Expected strings below were rendered by Python Jinja2 (transformers' settings) from the same template text.
    [Theory]
    [InlineData("chatml", true, false, "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n Hi <|im_end|>\n<|im_start|>assistant\nHello!<|im_end|>\n<|im_start|>user\nBye<|im_end|>\n")]
    [InlineData("chatml", false, true, "<|im_start|>user\n Hi <|im_end|>\n<|im_start|>assistant\nHello!<|im_end|>\n<|im_start|>assistant\n")]
    [InlineData("llama3", true, true, "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\nHello!<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nBye<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n")]
    [InlineData("llama3", false, false, "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\nHello!<|eot_id|>")]
    [InlineData("llama2", true, true, "<s>[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\n Hi [/INST] Hello! </s><s>[INST] Bye [/INST]")]
    [InlineData("llama2", false, false, "<s>[INST] Hi [/INST] Hello! </s>")]
    [InlineData("alpaca", true, true, "Be brief.\n\n### Instruction:\n Hi \n\n### Response:\nHello!\n\n### Instruction:\nBye\n\n### Response:\n")]
    [InlineData("alpaca", false, false, "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n### Instruction:\n Hi \n\n### Response:\nHello!\n\n")]
    public void Built_in_templates_render_their_conventional_format(string name, bool withSystem, bool addGenerationPrompt, string expected)
    {
        Assert.Equal(expected, ChatTemplate.BuiltIn(name).Render(Conversation(withSystem), addGenerationPrompt));
    }

    [Fact]
    public void Built_in_special_tokens_can_be_overridden()
    {
        var t = ChatTemplate.BuiltIn("llama2");
        var msgs = JsonNode.Parse("""[{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}]""")!.AsArray();
        Assert.Equal("<BOS>[INST] Q [/INST] A <EOS>", t.Render(msgs, false, "<BOS>", "<EOS>"));
        Assert.Equal("<s>[INST] Q [/INST] A </s>", t.Render(msgs));
    }

    [Fact]
    public void Built_in_llama2_requires_alternating_roles()
    {
        var msgs = JsonNode.Parse("""[{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]""")!.AsArray();
        var e = Assert.Throws<ChatTemplateRaisedException>(() => ChatTemplate.BuiltIn("llama2").Render(msgs));
        Assert.Equal("Conversation roles must alternate user/assistant/user/assistant/...", e.Message);
    }

    [Fact]
    public void Unknown_built_in_is_a_config_error_listing_the_names()
    {
        var e = Assert.Throws<PeftConfigException>(() => ChatTemplate.BuiltIn("vicuna"));
        Assert.Contains("chatml, llama3, llama2, alpaca", e.Message);
    }

    [Fact]
    public void Raise_exception_throws_the_templates_message()
    {
        var e = Assert.Throws<ChatTemplateRaisedException>(() => Render("{% if true %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}"));
        Assert.Equal("Only user and assistant roles are supported!", e.Message);
        Assert.IsAssignableFrom<PeftSharpException>(e);
    }

    [Theory]
    [InlineData("{% include 'other.jinja' %}", "'{% include %}' tag is not supported")]
    [InlineData("{% extends 'base' %}", "'{% extends %}' tag is not supported")]
    [InlineData("{% for x in xs recursive %}{% endfor %}", "recursive for loops")]
    [InlineData("{% frobnicate %}", "unknown tag '{% frobnicate %}'")]
    [InlineData("{{ xs|groupby('a') }}", "filter 'groupby' is not supported")]
    [InlineData("{{ 'x'|frob }}", "no filter named 'frob'")]
    [InlineData("{{ 1 is frob }}", "no test named 'frob'")]
    [InlineData("{{ 'x'.zfill(3) }}", "string method 'zfill' is not supported")]
    [InlineData("{{ '{:>4}'.format(1) }}", "format spec")]
    [InlineData("{{ cycler(1, 2) }}", "'cycler' is not supported")]
    [InlineData("{{ f(*args) }}", "'*args'")]
    [InlineData("{{ 'a' ~ }}", "unexpected")]
    public void Unsupported_or_invalid_constructs_are_errors_naming_them(string template, string expectedFragment)
    {
        var e = Assert.ThrowsAny<ChatTemplateException>(() => Render(template, """{"xs": [1]}"""));
        Assert.Contains(expectedFragment, e.Message);
    }

    [Fact]
    public void Runaway_macro_recursion_is_an_error_not_a_stack_overflow()
    {
        var e = Assert.Throws<PeftLimitException>(() => Render("{% macro m(n) %}{{ m(n + 1) }}{% endmacro %}{{ m(0) }}"));
        Assert.Contains("macro 'm' recursion exceeds the limit of 200 levels", e.Message);
        Assert.Contains("PEFTSHARP_JINJA_MAX_DEPTH", e.Message);
        Assert.Equal("3", Render("{% macro f(n) %}{{ n if n >= 3 else f(n + 1) }}{% endmacro %}{{ f(0) }}"));
    }

    [Fact]
    public void String_escapes_follow_python()
    {
        Assert.Equal("\ud800|\U0001D518|\\q", Render(@"{{ '\ud800' }}|{{ '\U0001d518' }}|{{ '\q' }}"));
    }

    [Fact]
    public void Errors_carry_the_template_line()
    {
        var e = Assert.ThrowsAny<ChatTemplateException>(() => Render("line one\n{% if true %}\n{{ missing.attr }}\n{% endif %}"));
        Assert.Equal(3, e.Line);
        Assert.Contains("line 3", e.Message);
        Assert.Contains("'missing' is undefined", e.Message);
        var p = Assert.ThrowsAny<ChatTemplateException>(() => new ChatTemplate("a\nb\n{% if x %}\nc"));
        Assert.Contains("endif", p.Message);
    }

    [Fact]
    public void Strftime_now_uses_the_clock()
    {
        var t = new ChatTemplate("{{ strftime_now('%d %b %Y') }}|{{ strftime_now('%Y-%m-%d %H:%M:%S %A %B %-d %I%p %j') }}")
        {
            Clock = () => new DateTime(2025, 3, 7, 14, 5, 9),
        };
        Assert.Equal("07 Mar 2025|2025-03-07 14:05:09 Friday March 7 02PM 066", t.Render(new JsonArray()));
        Assert.Throws<ChatTemplateException>(() => new ChatTemplate("{{ strftime_now('%Q') }}").Render(new JsonArray()));
    }

    [Fact]
    public void Transformers_variables_are_present()
    {
        // tools and documents are passed as None when absent; add_generation_prompt is a bool.
        Assert.Equal("True True True", new ChatTemplate("{{ tools is none }} {{ documents is none }} {{ add_generation_prompt }}")
            .Render(new JsonArray(), true));
        Assert.Equal("1", Render("{{ tools|length }}", """{"tools": [{"type": "function"}]}"""));
        Assert.Throws<ChatTemplateException>(() => Render("x", """{"messages": []}"""));
    }

    [Fact]
    public void Generation_blocks_render_their_content()
    {
        var t = new ChatTemplate("{% for m in messages %}{% if m.role == 'assistant' %}{% generation %}{{ m.content }}{% endgeneration %}{% else %}[{{ m.content }}]{% endif %}{% endfor %}");
        Assert.Equal("[Be brief.][ Hi ]Hello![Bye]", t.Render(Conversation()));
    }

    [Fact]
    public void Message_fields_keep_their_json_types()
    {
        var msgs = JsonNode.Parse("""
            [{"role": "assistant", "content": null, "tool_calls": [{"function": {"name": "f", "arguments": {"x": 1, "y": 2.50, "z": [true, null, "é"]}}}]}]
            """)!.AsArray();
        var t = new ChatTemplate("{{ messages[0].content is none }} {{ messages[0].tool_calls[0].function.arguments|tojson }} {{ messages[0].tool_calls[0].function.arguments.y * 2 }}");
        Assert.Equal("True {\"x\": 1, \"y\": 2.5, \"z\": [true, null, \"é\"]} 5.0", t.Render(msgs));
    }

    [Fact]
    public void A_parsed_template_renders_many_times_and_concurrently()
    {
        var t = ChatTemplate.BuiltIn("chatml");
        var results = new string[64];
        Parallel.For(0, results.Length, i =>
        {
            var msgs = new JsonArray(new JsonObject { ["role"] = "user", ["content"] = $"q{i}" });
            results[i] = t.Render(msgs, true);
        });
        for (int i = 0; i < results.Length; i++)
            Assert.Equal($"<|im_start|>user\nq{i}<|im_end|>\n<|im_start|>assistant\n", results[i]);
    }

    [Fact]
    public void From_folder_prefers_chat_template_jinja_then_the_config()
    {
        var dir = TestPaths.TempDir();
        try
        {
            Assert.Null(ChatTemplate.FromFolder(dir));
            File.WriteAllText(Path.Combine(dir, "tokenizer_config.json"), """
                {"chat_template": [{"name": "default", "template": "D{{ messages|length }}"}, {"name": "tool_use", "template": "T"}]}
                """);
            Assert.Equal("D0", ChatTemplate.FromFolder(dir)!.Render(new JsonArray()));
            Assert.Equal("T", ChatTemplate.FromFolder(dir, "tool_use")!.Render(new JsonArray()));
            var e = Assert.Throws<PeftFormatException>(() => ChatTemplate.FromFolder(dir, "rag"));
            Assert.Contains("'rag'", e.Message);
            File.WriteAllText(Path.Combine(dir, "chat_template.jinja"), "J{{ add_generation_prompt }}\n");
            Assert.Equal("JFalse", ChatTemplate.FromFolder(dir)!.Render(new JsonArray()));
        }
        finally { Directory.Delete(dir, true); }
    }

    [Fact]
    public void Special_token_variables_accept_added_token_objects()
    {
        var config = JsonNode.Parse("""
            {"bos_token": {"__type": "AddedToken", "content": "<s>"}, "eos_token": "</s>", "unk_token": null, "pad_token": "<pad>"}
            """)!.AsObject();
        var vars = ChatTemplate.SpecialTokenVariables(config);
        Assert.Equal(["bos_token", "eos_token", "pad_token"], vars.Select(kv => kv.Key));
        Assert.Equal(["<s>", "</s>", "<pad>"], vars.Select(kv => kv.Value!.GetValue<string>()));
    }
}
