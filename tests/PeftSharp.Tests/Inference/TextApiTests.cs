using System.Text.RegularExpressions;
using Microsoft.Extensions.AI;
using Microsoft.Extensions.DependencyInjection;
using PeftSharp.Inference;
using PeftSharp.Models;
using PeftSharp.Tests.Tokenization;
using PeftSharp.Tokenization;
using PeftSharp.Tuners;

namespace PeftSharp.Tests.Inference;

/// <summary>Text in, text out: TextGenerator's string and chat overloads, streaming, LocalChatClient, the DI helper, the README sample.</summary>
public class TextApiTests
{
    static readonly GenerationOptions Greedy6 = new() { MaxNewTokens = 6 };

    [Fact]
    public async Task Text_and_chat_overloads_answer_what_the_id_api_generates_and_stream_the_same_text()
    {
        var dir = TinyTokenizer.ModelWithTokenizer("llama-tiny");
        using var model = AutoModel.FromPretrained(dir);
        var tokenizer = HfTokenizer.FromFolder(dir);
        var generator = new TextGenerator(model, tokenizer, "chatml");

        var ids = new TextGenerator(model).Generate(new[] { tokenizer.Encode("hello world") }, Greedy6).NewTokens[0];
        var text = generator.Generate("hello world", Greedy6);
        Assert.Equal(tokenizer.Decode(ids, skipSpecialTokens: true), text);
        var streamed = string.Concat(await generator.GenerateStreamingAsync("hello world", Greedy6).ToListAsync());
        Assert.Equal(text, streamed);

        var chat = new[] { new ChatMessage(ChatRole.System, "be brief"), new ChatMessage(ChatRole.User, "hello") };
        var chatIds = new TextGenerator(model).Generate(new[] { generator.EncodeChat(chat) }, Greedy6).NewTokens[0];
        Assert.Equal(tokenizer.Decode(chatIds, skipSpecialTokens: true), generator.Generate(chat, Greedy6));
        Assert.Equal(generator.Generate(chat, Greedy6), string.Concat(await generator.GenerateStreamingAsync(chat, Greedy6).ToListAsync()));

        // Leaving a stream early stops the generation behind it.
        await foreach (var _ in generator.GenerateStreamingAsync("hello", new GenerationOptions { MaxNewTokens = 50 })) break;

        var noTokenizer = Assert.Throws<PeftSharpException>(() => new TextGenerator(model).Generate("hi"));
        Assert.Contains("tokenizer", noTokenizer.Message);
    }

    [Fact]
    public async Task The_di_helper_registers_a_chat_client_over_a_model_folder_with_switchable_adapters()
    {
        var dir = TinyTokenizer.ModelWithTokenizer("llama-tiny");
        var adapter = TestPaths.Data("adapters", "llama-tiny", "lora_qv");
        var services = new ServiceCollection();
        services.AddPeftChatClient(dir, o => { o.ChatTemplate = "chatml"; o.Adapters.Add(("qv", adapter)); });
        var messages = new[] { new ChatMessage(ChatRole.User, "hello") };
        var options = new ChatOptions { Temperature = 0, MaxOutputTokens = 6 };

        string withAdapter, withoutAdapter;
        using (var m = AutoModel.FromPretrained(dir))
        {
            var peft = PeftModel.LoadWithAdapters(m, new[] { ("qv", adapter) });
            var reference = new TextGenerator(peft, HfTokenizer.FromFolder(dir), "chatml");
            withAdapter = reference.Generate(messages, Greedy6);
            using (peft.DisableAdapters()) withoutAdapter = reference.Generate(messages, Greedy6);
        }

        await using (var provider = services.BuildServiceProvider())
        {
            var client = provider.GetRequiredService<IChatClient>();
            Assert.IsType<LocalChatClient>(client);
            var response = await client.GetResponseAsync(messages, options);
            Assert.Equal(withAdapter, response.Text);
            var updates = await client.GetStreamingResponseAsync(messages, options).ToListAsync();
            Assert.Equal(withAdapter, string.Concat(updates.Select(u => u.Text)));
            Assert.Equal(ChatFinishReason.Stop, updates[^1].FinishReason);
            Assert.Equal(withoutAdapter, (await client.GetResponseAsync(messages, new ChatOptions { Temperature = 0, MaxOutputTokens = 6, ModelId = "base" })).Text);
            var unknown = await Assert.ThrowsAsync<PeftSharpException>(() => client.GetResponseAsync(messages, new ChatOptions { ModelId = "nope" }));
            Assert.Contains("nope", unknown.Message);
        }
    }

    [Fact]
    public void The_readme_training_example_is_the_sample_that_compiles_and_it_trains_and_answers()
    {
        var sample = File.ReadAllText(TestPaths.RepoFile(Path.Combine("samples", "TrainFromCode", "Program.cs")));
        var body = Regex.Match(sample, @"// README begin\n(.*?)\n\s*// README end", RegexOptions.Singleline).Groups[1].Value;
        var lines = body.Split('\n');
        int indent = lines.Where(l => l.Trim().Length > 0).Min(l => l.Length - l.TrimStart().Length);
        var dedented = string.Join("\n", lines.Select(l => l.Length >= indent ? l[indent..] : l.TrimStart()));
        Assert.Contains(dedented, File.ReadAllText(TestPaths.RepoFile("README.md")).Replace("\r\n", "\n"));

        var dir = TestPaths.TempDir();
        var model = TinyTokenizer.ModelWithTokenizer("llama-tiny");
        var data = Path.Combine(dir, "data.jsonl");
        File.WriteAllLines(data, Enumerable.Range(0, 10).Select(i => $"{{\"instruction\":\"rv ab{i}\",\"output\":\"{i}ba\"}}"));
        var output = Path.Combine(dir, "out");
        var stdout = Console.Out;
        var captured = new StringWriter();
        Console.SetOut(captured);
        try { PeftSharp.Samples.TrainFromCode.Run(model, data, output, maxSteps: 4); }
        finally { Console.SetOut(stdout); }
        Assert.Contains("trainable params: ", captured.ToString());
        Assert.Contains("4 steps, eval loss ", captured.ToString());
        Assert.True(File.Exists(Path.Combine(output, "adapter_model.safetensors")));
        Assert.Single(Directory.GetFiles(Path.Combine(output, "runs"), "events.out.tfevents.*", SearchOption.AllDirectories));
    }
}
