using System.Text.Json.Nodes;
using PeftSharp.Tests.Cli;
using PeftSharp.Tokenization;
using PeftSharp.Tokenization.ChatTemplates;

namespace PeftSharp.Tests.Tokenization.ChatTemplates;

/// <summary>The folder-level path (template + special-token variables + tokenizer) against transformers' apply_chat_template.</summary>
public class ChatPromptTests
{
    static string Qwen3 => TestPaths.Data("tokenizers", "qwen3");

    static IEnumerable<JsonObject> Cases() =>
        File.ReadLines(Path.Combine(Qwen3, "chat_cases.jsonl")).Where(l => l.Trim().Length > 0).Select(l => (JsonObject)JsonNode.Parse(l)!);

    [Fact]
    public void Rendered_text_and_ids_equal_apply_chat_template()
    {
        var tok = HfTokenizer.FromFolder(Qwen3);
        int n = 0;
        foreach (var c in Cases())
        {
            var messages = c["messages"]!.AsArray();
            bool addGen = c["add_generation_prompt"]!.GetValue<bool>();
            var extra = c["extra_kwargs"] as JsonObject;
            Assert.Equal(c["rendered"]!.GetValue<string>(), ChatPrompt.Render(Qwen3, messages, addGen, extra));
            var expectedIds = c["ids"]!.AsArray().Select(x => x!.GetValue<int>());
            Assert.Equal(expectedIds, ChatPrompt.Encode(tok, messages, addGen, extra));
            n++;
        }
        Assert.True(n >= 5, $"only {n} chat cases");
    }

    [Fact]
    public void Cli_renders_the_first_case()
    {
        var c = Cases().First();
        var file = Path.Combine(TestPaths.TempDir(), "messages.json");
        File.WriteAllText(file, c["messages"]!.ToJsonString());
        var (code, o, e) = CliRunner.Run("chat-template", "--model", Qwen3, "--messages", file, "--add-generation-prompt");
        Assert.True(code == 0, e);
        Assert.Equal(c["rendered"]!.GetValue<string>(), o);
    }

    [Fact]
    public void Folder_without_a_template_needs_a_built_in_one()
    {
        var gpt2 = TestPaths.Data("tokenizers", "gpt2");
        var messages = new JsonArray(new JsonObject { ["role"] = "user", ["content"] = "Hi" });
        var ex = Assert.Throws<PeftFormatException>(() => ChatPrompt.Render(gpt2, messages));
        Assert.Contains("chatml", ex.Message);
        Assert.Equal("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n", ChatPrompt.Render(gpt2, messages, addGenerationPrompt: true, template: "chatml"));
    }
}
