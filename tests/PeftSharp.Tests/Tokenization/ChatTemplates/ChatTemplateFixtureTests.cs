using System.Text.Json.Nodes;
using PeftSharp.Tokenization.ChatTemplates;
using Xunit.Abstractions;

namespace PeftSharp.Tests.Tokenization.ChatTemplates;

/// <summary>Every chat case of the tokenizer fixtures, rendered from the folder's own chat_template.</summary>
public class ChatTemplateFixtureTests(ITestOutputHelper output)
{
    /// <summary>A tokenizer fixture folder from ../shared/fixtures, or null where that folder is absent.</summary>
    internal static string? SharedTokenizerFolder(string name)
    {
        var root = TestPaths.SharedFixtures();
        var dir = root is null ? null : Path.Combine(root, "tokenizers", name);
        return dir is not null && Directory.Exists(dir) ? dir : null;
    }

    private static int CheckAll(string dir)
    {
        var template = ChatTemplate.FromFolder(dir) ?? throw new InvalidOperationException($"{dir} has no chat_template");
        int n = 0;
        foreach (var line in File.ReadLines(Path.Combine(dir, "chat_cases.jsonl")))
        {
            if (string.IsNullOrWhiteSpace(line)) continue;
            var c = JsonNode.Parse(line)!.AsObject();
            var vars = (JsonObject)c["special_tokens"]!.DeepClone();
            foreach (var (k, v) in c["extra_kwargs"]!.AsObject()) vars[k] = v?.DeepClone();
            var rendered = template.Render(c["messages"]!.AsArray(), c["add_generation_prompt"]!.GetValue<bool>(), vars);
            Assert.True(c["rendered"]!.GetValue<string>() == rendered,
                $"case {c["name"]}: expected\n{c["rendered"]}\n--- got\n{rendered}");
            n++;
        }
        return n;
    }

    [Fact]
    public void Qwen3_chat_cases_render_exactly()
    {
        Assert.Equal(5, CheckAll(TestPaths.Data("tokenizers", "qwen3")));
    }

    [Fact]
    public void Llama3_chat_cases_render_exactly()
    {
        // Meta's licensed files are not copied into the project; they are read from the shared fixtures when present.
        var dir = SharedTokenizerFolder("llama3");
        if (dir is null)
        {
            output.WriteLine("skipped: ../shared/fixtures/tokenizers/llama3 is not present (Meta Llama 3 files are not shipped)");
            return;
        }
        Assert.Equal(4, CheckAll(dir));
    }

    [Fact]
    public void Special_token_variables_follow_the_tokenizer_config()
    {
        var config = JsonNode.Parse(File.ReadAllText(TestPaths.Data("tokenizers", "qwen3", "tokenizer_config.json")))!.AsObject();
        var vars = ChatTemplate.SpecialTokenVariables(config);
        var expected = JsonNode.Parse(File.ReadLines(TestPaths.Data("tokenizers", "qwen3", "chat_cases.jsonl")).First())!["special_tokens"];
        Assert.True(JsonNode.DeepEquals(expected, vars), vars.ToJsonString());
    }
}
