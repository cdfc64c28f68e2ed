using System.Text.Json.Nodes;
using Microsoft.Extensions.AI;
using PeftSharp.Inference;
using PeftSharp.Inference.Serving;
using PeftSharp.Models;
using PeftSharp.Tuners;
using static PeftSharp.Tests.Serving.ServingTestHost;

namespace PeftSharp.Tests.Serving;

public class ServingRobustnessTests
{
    static readonly int[] Prompt = { 226, 3, 181, 83, 195 };

    static int[] Reference(string modelDir, int[] prompt, string adapterDir, int maxNew)
    {
        using var model = AutoModel.FromPretrained(modelDir);
        var peft = PeftModel.FromPretrained(model, adapterDir, "x");
        return new TextGenerator(peft.Model).Generate(new[] { prompt }, new GenerationOptions { MaxNewTokens = maxNew }.WithGenerationConfig(modelDir)).NewTokens[0];
    }

    static JsonObject Long(string model, int maxTokens = 110) => new()
    {
        ["model"] = model, ["prompt"] = Json(Prompt), ["max_tokens"] = maxTokens, ["temperature"] = 0, ["ignore_eos"] = true, ["return_token_ids"] = true,
    };

    [Fact]
    public async Task AdapterPathsCannotLeaveTheAdapterRoot()
    {
        var root = TestPaths.TempDir();
        var outside = TestPaths.TempDir();
        CopyDir(Multi("a"), Path.Combine(root, "good"));
        CopyDir(Multi("b"), Path.Combine(outside, "secret"));
        Directory.CreateSymbolicLink(Path.Combine(root, "link"), Path.Combine(outside, "secret"));
        Directory.CreateDirectory(Path.Combine(root, "filelink"));
        File.Copy(Path.Combine(Multi("b"), "adapter_config.json"), Path.Combine(root, "filelink", "adapter_config.json"));
        File.CreateSymbolicLink(Path.Combine(root, "filelink", "adapter_model.safetensors"), Path.Combine(outside, "secret", "adapter_model.safetensors"));

        await using var host = await StartAsync(new ServingOptions { AdapterRoot = root }, adapters: Array.Empty<(string, string)>());
        async Task<(int, JsonObject)> Load(string name, string path) =>
            await host.PostAsync("/v1/load_lora_adapter", new JsonObject { ["lora_name"] = name, ["lora_path"] = path });

        foreach (var (path, message) in new[]
        {
            ("../secret", "'..'"), ("good/../../x", "'..'"), (Path.Combine(outside, "secret"), "relative"),
            ("link", "leaves the adapter root"), ("filelink", "links outside"),
        })
        {
            var (status, body) = await Load("evil", path);
            Assert.Equal(400, status);
            Assert.Contains(message, body["error"]!["message"]!.GetValue<string>());
        }
        Assert.Equal(404, (await Load("evil", "missing")).Item1);
        Assert.Equal(400, (await Load("../evil", "good")).Item1);
        Assert.Equal(400, (await Load("__base__", "good")).Item1);
        Assert.Empty(host.Engine.AdapterNames);

        var (ok, text) = await Load("g", "good");
        Assert.Equal(200, ok);
        Assert.Contains("Success", text["text"]!.GetValue<string>());
        Assert.Equal(400, (await Load("g", "good")).Item1);
        var (s, completion) = await host.PostAsync("/v1/completions", Long("g", 6));
        Assert.Equal(200, s);
        var expected = Reference(TestPaths.Model("llama-tiny"), Prompt, Multi("a"), 6);
        Assert.Equal(expected.Length, 6);
        Assert.Equal(expected, Ints(completion["choices"]![0]!["token_ids"]));

        Assert.Equal(200, (await host.PostAsync("/v1/unload_lora_adapter", new JsonObject { ["lora_name"] = "g" })).Status);
        Assert.Equal(404, (await host.PostAsync("/v1/unload_lora_adapter", new JsonObject { ["lora_name"] = "g" })).Status);
        Assert.Equal(404, (await host.PostAsync("/v1/completions", Long("g", 2))).Status);
    }

    [Fact]
    public async Task LoadingAtRunTimeIsOffWithoutAnAdapterRoot()
    {
        await using var host = await StartAsync(adapters: Array.Empty<(string, string)>());
        var (status, body) = await host.PostAsync("/v1/load_lora_adapter", new JsonObject { ["lora_name"] = "x", ["lora_path"] = "a" });
        Assert.Equal(403, status);
        Assert.Contains("--adapter-root", body["error"]!["message"]!.GetValue<string>());
    }

    [Fact]
    public async Task MaxLorasEvictsTheLeastRecentlyUsedIdleAdapter()
    {
        await using var host = await StartAsync(new ServingOptions { MaxLoras = 1 });
        var expected = new Dictionary<string, int[]>();
        foreach (var name in new[] { "a", "b", "c" }) expected[name] = Reference(TestPaths.Model("llama-tiny"), Prompt, Multi(name), 5);
        Assert.True(host.Engine.IsLoaded("c"));
        foreach (var name in new[] { "a", "b", "a", "c" })
        {
            var (status, body) = await host.PostAsync("/v1/completions", Long(name, 5));
            Assert.Equal(200, status);
            Assert.Equal(expected[name], Ints(body["choices"]![0]!["token_ids"]));
            Assert.True(host.Engine.IsLoaded(name));
            Assert.Equal(1, host.Engine.Metrics().AdaptersLoaded);
        }
        // Two adapters at once under a cap of one: the second waits for the first to finish, then takes its place.
        var both = await Task.WhenAll(host.PostAsync("/v1/completions", Long("a", 5)), host.PostAsync("/v1/completions", Long("b", 5)));
        Assert.Equal(expected["a"], Ints(both[0].Body["choices"]![0]!["token_ids"]));
        Assert.Equal(expected["b"], Ints(both[1].Body["choices"]![0]!["token_ids"]));
    }

    [Fact]
    public async Task ACancelledRequestLeavesTheBatchAndFreesItsSlot()
    {
        // A long context and 8000 tokens: the cancellation must land mid-generation however fast the machine is.
        using var engine = ServingEngine.FromFolder(LongContextModel(), new ServingOptions { MaxBatchSize = 1, MaxTokensLimit = 8000 }, new[] { ("a", Multi("a")) });
        using var cts = new CancellationTokenSource();
        var options = new GenerationOptions { MaxNewTokens = 8000, EosTokenIds = Array.Empty<int>() };
        var first = engine.Submit(new ServingRequest { PromptIds = Prompt, Adapter = "a", Options = options }, cts.Token);
        await first.Tokens.ReadAsync();
        cts.Cancel();
        var done = await first.Completion;
        Assert.True(done.Cancelled);
        Assert.True(done.Tokens.Length < 8000);
        var second = await engine.GenerateAsync(new ServingRequest { PromptIds = Prompt, Adapter = "a", Options = options with { MaxNewTokens = 3 } });
        Assert.Equal(3, second.Tokens.Length);
        Assert.Equal(1, engine.Metrics().RequestsCancelled);
        Assert.Equal(0, engine.Metrics().BatchSize);
    }

    [Fact]
    public async Task AClientThatDisconnectsMidStreamFreesItsSlot()
    {
        await using var host = await StartAsync(new ServingOptions { MaxBatchSize = 1, MaxTokensLimit = 8000 }, LongContextModel());
        var body = Long("a", 8000);
        body["stream"] = true;
        using (var request = new HttpRequestMessage(HttpMethod.Post, "/v1/completions") { Content = new StringContent(body.ToJsonString(), System.Text.Encoding.UTF8, "application/json") })
        using (var response = await host.Http.SendAsync(request, HttpCompletionOption.ResponseHeadersRead))
        {
            using var reader = new StreamReader(await response.Content.ReadAsStreamAsync());
            Assert.StartsWith("data: ", await reader.ReadLineAsync());
        }
        var (status, result) = await host.PostAsync("/v1/completions", Long("b", 4));
        Assert.Equal(200, status);
        Assert.Equal(4, Ints(result["choices"]![0]!["token_ids"]).Length);
        var m = host.Engine.Metrics();
        Assert.Equal(1, m.RequestsCancelled);
        Assert.Equal(1, m.RequestsFinished);
        Assert.Equal(0, m.BatchSize);
    }

    [Fact]
    public async Task AFullQueueRefusesWith429()
    {
        using var engine = ServingEngine.FromFolder(TestPaths.Model("llama-tiny"), new ServingOptions { MaxBatchSize = 1, MaxQueue = 2 }, new[] { ("a", Multi("a")) });
        var options = new GenerationOptions { MaxNewTokens = 20, EosTokenIds = Array.Empty<int>() };
        var accepted = new List<Task<ServedCompletion>>();
        int refused = 0;
        for (int i = 0; i < 12; i++)
        {
            try { accepted.Add(engine.GenerateAsync(new ServingRequest { PromptIds = Prompt, Adapter = "a", Options = options })); }
            catch (ServingException e) when (e.Status == 429) { refused++; }
        }
        Assert.True(refused > 0);
        Assert.True(accepted.Count >= 2);
        foreach (var r in await Task.WhenAll(accepted)) Assert.Equal(20, r.Tokens.Length);
        Assert.Equal(refused, engine.Metrics().RequestsRejected);
    }

    [Fact]
    public async Task GracefulShutdownFinishesInFlightRequestsAndRefusesNewOnes()
    {
        var host = await StartAsync();
        var streaming = host.StreamAsync("/v1/completions", Long("a", 60));
        while (host.Engine.Metrics().RequestsTotal == 0) await Task.Delay(5);
        await host.Server.StopAsync();
        var (events, done) = await streaming;
        Assert.True(done);
        Assert.Equal(60, events.SelectMany(e => e["choices"]![0]!["token_ids"] is JsonArray a ? Ints(a) : Array.Empty<int>()).Count());
        var refused = Assert.Throws<ServingException>(() => host.Engine.Submit(new ServingRequest { PromptIds = Prompt }));
        Assert.Equal(503, refused.Status);
        await host.DisposeAsync();

        // With no time to drain, running requests are cancelled instead.
        using var engine = ServingEngine.FromFolder(TestPaths.Model("llama-tiny"));
        var running = engine.Submit(new ServingRequest { PromptIds = Prompt, Options = new GenerationOptions { MaxNewTokens = 110, EosTokenIds = Array.Empty<int>() } });
        await running.Tokens.ReadAsync();
        await engine.StopAsync(TimeSpan.Zero);
        Assert.True((await running.Completion).Cancelled);
    }

    [Fact]
    public async Task ChatClientServesTheBaseModelAndAdaptersInProcess()
    {
        var dir = Tokenization.TinyTokenizer.ModelWithTokenizer("llama-tiny");
        var tokenizer = PeftSharp.Tokenization.HfTokenizer.FromFolder(dir);
        using var engine = ServingEngine.FromFolder(dir, new ServingOptions { ChatTemplate = "chatml" }, new[] { ("a", Multi("a")) });
        IChatClient client = new PeftChatClient(engine);
        var messages = new[] { new ChatMessage(ChatRole.System, "be brief"), new ChatMessage(ChatRole.User, "hello") };
        var conversation = new JsonArray(new JsonObject { ["role"] = "system", ["content"] = "be brief" }, new JsonObject { ["role"] = "user", ["content"] = "hello" });
        var prompt = PeftSharp.Tokenization.ChatTemplates.ChatPrompt.Encode(tokenizer, conversation, true, null, "chatml").ToArray();
        var expected = tokenizer.Decode(Reference(dir, prompt, Multi("a"), 6), skipSpecialTokens: true);

        var options = new ChatOptions { ModelId = "a", Temperature = 0, MaxOutputTokens = 6 };
        var response = await client.GetResponseAsync(messages, options);
        Assert.Equal(expected, response.Text);
        Assert.Equal("a", response.ModelId);
        Assert.Equal(prompt.Length, response.Usage!.InputTokenCount);
        var streamed = new List<ChatResponseUpdate>();
        await foreach (var u in client.GetStreamingResponseAsync(messages, options)) streamed.Add(u);
        Assert.Equal(expected, string.Concat(streamed.Select(u => u.Text)));
        Assert.NotNull(streamed[^1].FinishReason);

        var baseResponse = await client.GetResponseAsync(messages, new ChatOptions { Temperature = 0, MaxOutputTokens = 6 });
        using var model = AutoModel.FromPretrained(dir);
        var baseIds = new TextGenerator(model).Generate(new[] { prompt }, new GenerationOptions { MaxNewTokens = 6 }.WithGenerationConfig(dir)).NewTokens[0];
        Assert.Equal(tokenizer.Decode(baseIds, skipSpecialTokens: true), baseResponse.Text);
        Assert.IsType<ChatClientMetadata>(client.GetService(typeof(ChatClientMetadata)));
    }

    /// <summary>llama-tiny with a long context (RoPE positions are not learned), so a request can outlive what a test does meanwhile.</summary>
    static string LongContextModel()
    {
        var dir = TestPaths.TempDir();
        foreach (var f in Directory.GetFiles(TestPaths.Model("llama-tiny"))) File.Copy(f, Path.Combine(dir, Path.GetFileName(f)));
        var config = JsonNode.Parse(File.ReadAllText(Path.Combine(dir, "config.json")))!;
        config["max_position_embeddings"] = 8192;
        File.WriteAllText(Path.Combine(dir, "config.json"), config.ToJsonString());
        return dir;
    }

    [Fact]
    public async Task ARequestWhoseAdapterIsUnloadedWhileQueuedFailsWith404AndTheQueueMovesOn()
    {
        using var engine = ServingEngine.FromFolder(LongContextModel(), new ServingOptions { MaxBatchSize = 1, MaxTokensLimit = 8000 }, new[] { ("a", Multi("a")), ("b", Multi("b")) });
        using var cts = new CancellationTokenSource();
        var options = new GenerationOptions { MaxNewTokens = 8000, EosTokenIds = Array.Empty<int>() };
        var running = engine.Submit(new ServingRequest { PromptIds = Prompt, Adapter = "a", Options = options }, cts.Token);
        await running.Tokens.ReadAsync();
        var queued = engine.Submit(new ServingRequest { PromptIds = Prompt, Adapter = "b", Options = options with { MaxNewTokens = 3 } });
        engine.UnloadAdapter("b");
        var unloadBusy = Assert.Throws<ServingException>(() => engine.UnloadAdapter("a"));
        Assert.Equal(409, unloadBusy.Status);
        cts.Cancel();
        Assert.True((await running.Completion).Cancelled);
        var failed = await Assert.ThrowsAsync<ServingException>(() => queued.Completion);
        Assert.Equal(404, failed.Status);
        var next = await engine.GenerateAsync(new ServingRequest { PromptIds = Prompt, Adapter = "a", Options = options with { MaxNewTokens = 2 } });
        Assert.Equal(2, next.Tokens.Length);
    }

    static void CopyDir(string from, string to)
    {
        Directory.CreateDirectory(to);
        foreach (var f in Directory.GetFiles(from)) File.Copy(f, Path.Combine(to, Path.GetFileName(f)));
    }
}
