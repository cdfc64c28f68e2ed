using System.Diagnostics;
using Microsoft.Extensions.AI;
using PeftSharp.Inference;
using PeftSharp.Models;
using PeftSharp.Tests.Tokenization;
using PeftSharp.Tokenization;
using PeftSharp.Tuners;

namespace PeftSharp.Tests.Cli;

public class ChatCommandTests
{
    [Fact]
    public void Chat_reads_turns_and_commands_from_stdin_and_streams_what_the_text_api_answers()
    {
        var model = TinyTokenizer.ModelWithTokenizer("llama-tiny");
        // Room for the whole conversation (RoPE has no position table), so nothing is dropped here.
        var config = Path.Combine(model, "config.json");
        File.WriteAllText(config, File.ReadAllText(config).Replace("\"max_position_embeddings\": 128", "\"max_position_embeddings\": 4096"));
        var adapter = TestPaths.Data("adapters", "llama-tiny", "lora_qv");
        var (code, output, err) = CliRunner.RunPiped("hello\n/system be brief\nworld\n/reset\nhello\n/adapter base\nhello\n/adapter nope\n/bogus\n/adapter\n",
            TimeSpan.FromMinutes(3), "chat", "--model", model, "--adapter", $"qv={adapter}", "--template", "chatml", "--temperature", "0", "--max-new-tokens", "6");
        Assert.True(code == 0, err);

        // The same conversation through the library's text API.
        using var m = AutoModel.FromPretrained(model);
        var peft = PeftModel.LoadWithAdapters(m, new[] { ("qv", adapter) });
        var generator = new TextGenerator(peft, HfTokenizer.FromFolder(model), "chatml");
        var options = new GenerationOptions { MaxNewTokens = 6 }.WithGenerationConfig(model);
        ChatMessage U(string t) => new(ChatRole.User, t);
        var system = new ChatMessage(ChatRole.System, "be brief");
        var r1 = generator.Generate(new[] { U("hello") }, options);
        var r2 = generator.Generate(new[] { system, U("hello"), new ChatMessage(ChatRole.Assistant, r1), U("world") }, options);
        var r3 = generator.Generate(new[] { system, U("hello") }, options);
        string r4;
        using (peft.DisableAdapters()) r4 = generator.Generate(new[] { system, U("hello") }, options);

        int at = 0;
        foreach (var expected in new[] { "# chatting with", r1 + "\n", "# system message set", r2 + "\n", "# conversation cleared", r3 + "\n",
                     "# answering with the base model", r4 + "\n", "# adapters: base (active), qv" })
        {
            int found = output.IndexOf(expected, at, StringComparison.Ordinal);
            Assert.True(found >= 0, $"'{expected}' not found after offset {at} in:\n{output}");
            at = found + expected.Length;
        }
        Assert.Contains("error: no adapter 'nope' (loaded: base, qv)", err);
        Assert.Contains("error: unknown command /bogus", err);
    }

    [Fact]
    public void Raw_mode_continues_each_line_as_a_plain_prompt()
    {
        var model = TinyTokenizer.ModelWithTokenizer("llama-tiny");
        var (code, output, err) = CliRunner.RunPiped("hello\nworld\n", TimeSpan.FromMinutes(3), "chat", "--model", model, "--raw", "--temperature", "0", "--max-new-tokens", "5");
        Assert.True(code == 0, err);
        using var m = AutoModel.FromPretrained(model);
        var generator = new TextGenerator(m, HfTokenizer.FromFolder(model));
        var options = new GenerationOptions { MaxNewTokens = 5 }.WithGenerationConfig(model);
        Assert.Contains(generator.Generate("hello", options) + "\n" + generator.Generate("world", options) + "\n", output);
    }

    [Fact]
    public void A_chat_session_drops_the_oldest_exchanges_to_fit_the_context_window()
    {
        var model = TinyTokenizer.ModelWithTokenizer("llama-tiny");
        using var m = AutoModel.FromPretrained(model);
        var generator = new TextGenerator(m, HfTokenizer.FromFolder(model), "chatml");
        int window = m.Config.ContextLength;
        Assert.True(window < 100_000, "the fixture declares max_position_embeddings");
        var session = new ChatSession(generator, new GenerationOptions { MaxNewTokens = 4 }) { SystemPrompt = "s" };
        var turn = new string('x', Math.Max(1, window / 3));
        for (int i = 0; i < 4; i++) session.Send(turn);
        Assert.True(session.DroppedExchanges > 0);
        Assert.True(session.History.Count < 8);
        Assert.Equal(turn, session.History[^2].Text);
        var tooLong = Assert.Throws<PeftSharpException>(() => session.Send(new string('y', window * 2)));
        Assert.Contains("context window", tooLong.Message);
        session.Reset();
        Assert.Empty(session.History);
    }
}
