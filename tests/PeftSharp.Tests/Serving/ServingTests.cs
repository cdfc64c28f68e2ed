using System.Text.Json;
using System.Text.Json.Nodes;
using PeftSharp.Inference;
using PeftSharp.Inference.Serving;
using PeftSharp.Models;
using PeftSharp.Tests.Inference;
using PeftSharp.Tuners;
using static PeftSharp.Tests.Serving.ServingTestHost;

namespace PeftSharp.Tests.Serving;

public class ServingTests
{
    static readonly string ModelDir = TestPaths.Model("llama-tiny");

    /// <summary>What TextGenerator gives for one prompt alone, on the base model or with one adapter loaded.</summary>
    static int[] Reference(int[] prompt, string? adapterDir, int maxNew, GenerationOptions? options = null)
    {
        using var model = AutoModel.FromPretrained(ModelDir);
        var target = adapterDir is null ? model : PeftModel.FromPretrained(model, adapterDir, "x").Model;
        var o = (options ?? new GenerationOptions()) with { MaxNewTokens = maxNew };
        return new TextGenerator(target).Generate(new[] { prompt }, o.WithGenerationConfig(ModelDir)).NewTokens[0];
    }

    static JsonObject Completion(string model, IEnumerable<int> prompt, int maxTokens) => new()
    {
        ["model"] = model, ["prompt"] = Json(prompt), ["max_tokens"] = maxTokens, ["temperature"] = 0, ["return_token_ids"] = true,
    };

    static int[] StreamedIds(List<JsonObject> events) =>
        events.SelectMany(e => e["choices"]![0]!["token_ids"] is JsonArray a ? Ints(a) : Array.Empty<int>()).ToArray();

    [Fact]
    public async Task GreedyCompletionsEqualTextGeneratorStreamedAndNot()
    {
        var prompts = GreedyFixture.Load("llama-tiny").BatchUnpadded;
        await using var host = await StartAsync();
        foreach (var (adapter, dir) in new[] { ("a", Multi("a")), ("llama-tiny", (string?)null) })
        {
            foreach (var prompt in prompts)
            {
                var expected = Reference(prompt, dir, 8);
                var (status, body) = await host.PostAsync("/v1/completions", Completion(adapter, prompt, 8));
                Assert.Equal(200, status);
                Assert.Equal("text_completion", body["object"]!.GetValue<string>());
                Assert.Equal(expected, Ints(body["choices"]![0]!["token_ids"]));
                Assert.Equal(prompt, Ints(body["choices"]![0]!["prompt_token_ids"]));
                Assert.Equal(expected.Length, body["usage"]!["completion_tokens"]!.GetValue<int>());
                Assert.Equal(expected.Length == 8 ? "length" : "stop", body["choices"]![0]!["finish_reason"]!.GetValue<string>());

                var (events, done) = await host.StreamAsync("/v1/completions", Completion(adapter, prompt, 8));
                Assert.True(done);
                Assert.Equal(expected, StreamedIds(events));
                Assert.NotNull(events[^1]["choices"]![0]!["finish_reason"]);
            }
        }
    }

    [Fact]
    public async Task GreedyWithTheSingleAdapterFixtureEqualsTextGenerator()
    {
        var dir = TestPaths.Data("adapters", "llama-tiny", "lora_qv");
        var prompt = GreedyFixture.Load("llama-tiny").SinglePrompt;
        await using var host = await StartAsync(adapters: new[] { ("qv", dir) });
        var (status, body) = await host.PostAsync("/v1/completions", Completion("qv", prompt, 10));
        Assert.Equal(200, status);
        Assert.Equal(Reference(prompt, dir, 10), Ints(body["choices"]![0]!["token_ids"]));
    }

    [Fact]
    public async Task MixedConcurrentRequestsEqualPeftMixedBatchGreedyFixture()
    {
        using var doc = JsonDocument.Parse(File.ReadAllText(Multi("greedy.json")));
        var mixed = doc.RootElement.GetProperty("mixed_batch");
        var prompts = mixed.GetProperty("prompt").EnumerateArray().Zip(mixed.GetProperty("attention_mask").EnumerateArray(),
            (p, m) => p.EnumerateArray().Zip(m.EnumerateArray()).Where(x => x.Second.GetInt32() == 1).Select(x => x.First.GetInt32()).ToArray()).ToArray();
        var names = mixed.GetProperty("adapter_names").EnumerateArray().Select(n => n.GetString()!).ToArray();
        var expected = mixed.GetProperty("new_tokens").EnumerateArray().Select(r => r.EnumerateArray().Select(x => x.GetInt32()).ToArray()).ToArray();
        Assert.Equal(new[] { "a", "b", "__base__" }, names);

        await using var host = await StartAsync();
        for (int round = 0; round < 2; round++)
        {
            var tasks = prompts.Select((p, i) => round == 0
                ? host.PostAsync("/v1/completions", Completion(names[i], p, 8)).ContinueWith(t => Ints(t.Result.Body["choices"]![0]!["token_ids"]))
                : host.StreamAsync("/v1/completions", Completion(names[i], p, 8)).ContinueWith(t => StreamedIds(t.Result.Events))).ToArray();
            var got = await Task.WhenAll(tasks);
            for (int i = 0; i < prompts.Length; i++) Assert.Equal(expected[i], got[i]);
        }
    }

    [Fact]
    public async Task ConcurrentRequestsOverMixedAdaptersEachGetWhatTheyGetAlone()
    {
        var rng = new Random(11);
        var models = new[] { "a", "b", "c", "llama-tiny" };
        var jobs = Enumerable.Range(0, 16).Select(i => (Model: models[i % 4], Prompt: Enumerable.Range(0, 3 + rng.Next(12)).Select(_ => 3 + rng.Next(300)).ToArray(), Max: 2 + rng.Next(12))).ToList();
        await using var host = await StartAsync(new ServingOptions { MaxBatchSize = 6 });
        var alone = new List<int[]>();
        foreach (var j in jobs)
        {
            var (status, body) = await host.PostAsync("/v1/completions", Completion(j.Model, j.Prompt, j.Max));
            Assert.Equal(200, status);
            alone.Add(Ints(body["choices"]![0]!["token_ids"]));
        }
        var together = await Task.WhenAll(jobs.Select(j => host.PostAsync("/v1/completions", Completion(j.Model, j.Prompt, j.Max))));
        for (int i = 0; i < jobs.Count; i++)
        {
            Assert.Equal(200, together[i].Status);
            Assert.Equal(alone[i], Ints(together[i].Body["choices"]![0]!["token_ids"]));
        }
        // Alone also means TextGenerator with just that adapter.
        Assert.Equal(Reference(jobs[1].Prompt, Multi("b"), jobs[1].Max), alone[1]);
        Assert.True(host.Engine.Metrics().DecodeSteps > 0);
    }

    [Fact]
    public async Task SeededSamplingEqualsTextGeneratorWithTheSameSeed()
    {
        var prompt = GreedyFixture.Load("llama-tiny").SinglePrompt;
        var sampling = new GenerationOptions { DoSample = true, Temperature = 0.8, TopK = 20, TopP = 0.9, Seed = 1234 };
        var expected = Reference(prompt, Multi("c"), 12, sampling);
        await using var host = await StartAsync();
        var body = Completion("c", prompt, 12);
        body["temperature"] = 0.8; body["top_k"] = 20; body["top_p"] = 0.9; body["seed"] = 1234;
        var results = await Task.WhenAll(host.PostAsync("/v1/completions", body.DeepClone().AsObject()), host.PostAsync("/v1/completions", Completion("a", prompt, 12)));
        Assert.Equal(expected, Ints(results[0].Body["choices"]![0]!["token_ids"]));
    }

    [Fact]
    public async Task TextPromptsAndChatUseTheTokenizer()
    {
        var dir = Tokenization.TinyTokenizer.ModelWithTokenizer("llama-tiny");
        var tokenizer = PeftSharp.Tokenization.HfTokenizer.FromFolder(dir);
        await using var host = await StartAsync(new ServingOptions { ChatTemplate = "chatml" }, dir);
        var prompt = tokenizer.Encode("hello world").ToArray();
        var expected = Reference(prompt, Multi("a"), 6);
        var (status, body) = await host.PostAsync("/v1/completions", new JsonObject { ["model"] = "a", ["prompt"] = "hello world", ["max_tokens"] = 6, ["temperature"] = 0 });
        Assert.Equal(200, status);
        Assert.Equal(tokenizer.Decode(expected, skipSpecialTokens: true), body["choices"]![0]!["text"]!.GetValue<string>());

        var messages = new JsonArray(new JsonObject { ["role"] = "user", ["content"] = "hello" });
        var chatPrompt = PeftSharp.Tokenization.ChatTemplates.ChatPrompt.Encode(tokenizer, messages, true, null, "chatml").ToArray();
        var chatExpected = tokenizer.Decode(Reference(chatPrompt, Multi("b"), 5), skipSpecialTokens: true);
        var chat = new JsonObject { ["model"] = "b", ["messages"] = messages.DeepClone(), ["max_tokens"] = 5, ["temperature"] = 0 };
        (status, body) = await host.PostAsync("/v1/chat/completions", chat);
        Assert.Equal(200, status);
        Assert.Equal("chat.completion", body["object"]!.GetValue<string>());
        Assert.Equal(chatExpected, body["choices"]![0]!["message"]!["content"]!.GetValue<string>());
        var (events, done) = await host.StreamAsync("/v1/chat/completions", chat);
        Assert.True(done);
        Assert.Equal("assistant", events[0]["choices"]![0]!["delta"]!["role"]!.GetValue<string>());
        Assert.Equal(chatExpected, string.Concat(events.Select(e => e["choices"]![0]!["delta"]!["content"]?.GetValue<string>())));
    }

    static async Task AssertError(ServingTestHost host, string path, string json, int status, string type, string? inMessage = null)
    {
        var (got, body) = await host.PostAsync(path, json);
        Assert.Equal(status, got);
        var error = body["error"] as JsonObject;
        Assert.NotNull(error);
        Assert.Equal(type, error!["type"]!.GetValue<string>());
        if (inMessage is not null) Assert.Contains(inMessage, error["message"]!.GetValue<string>());
    }

    [Fact]
    public async Task BadRequestsGetOpenAiErrorsAndTheServerStaysUp()
    {
        await using var host = await StartAsync(new ServingOptions { MaxTokensLimit = 64 });
        const string ok = "\"prompt\": [5, 6, 7], \"temperature\": 0";
        await AssertError(host, "/v1/completions", "{\"model\": \"a\", \"prompt\": [1, 2", 400, "invalid_request_error", "not valid JSON");
        await AssertError(host, "/v1/completions", "[1, 2]", 400, "invalid_request_error", "JSON object");
        await AssertError(host, "/v1/completions", $"{{\"model\": \"nope\", {ok}}}", 404, "not_found_error", "nope");
        await AssertError(host, "/v1/completions", $"{{{ok}}}", 400, "invalid_request_error", "model");
        await AssertError(host, "/v1/completions", "{\"model\": \"a\", \"prompt\": \"hello\"}", 400, "invalid_request_error", "tokenizer.json");
        await AssertError(host, "/v1/chat/completions", "{\"model\": \"a\", \"messages\": [{\"role\": \"user\", \"content\": \"hi\"}]}", 400, "invalid_request_error", "tokenizer.json");
        await AssertError(host, "/v1/completions", "{\"model\": \"a\", \"prompt\": [5, 999]}", 400, "invalid_request_error", "vocabulary");
        await AssertError(host, "/v1/completions", "{\"model\": \"a\", \"prompt\": []}", 400, "invalid_request_error", "prompt");
        await AssertError(host, "/v1/completions", $"{{\"model\": \"a\", {ok}, \"max_tokens\": 65}}", 400, "invalid_request_error", "max_tokens");
        await AssertError(host, "/v1/completions", $"{{\"model\": \"a\", {ok}, \"max_tokens\": 0}}", 400, "invalid_request_error", "max_tokens");
        var longPrompt = string.Join(", ", Enumerable.Repeat(5, 120));
        await AssertError(host, "/v1/completions", $"{{\"model\": \"a\", \"prompt\": [{longPrompt}], \"max_tokens\": 16}}", 400, "invalid_request_error", "maximum context length is 128");
        await AssertError(host, "/v1/completions", "{\"model\": \"a\", \"prompt\": [5], \"temperature\": 3}", 400, "invalid_request_error", "temperature");
        await AssertError(host, "/v1/completions", "{\"model\": \"a\", \"prompt\": [5], \"top_p\": 0}", 400, "invalid_request_error", "top_p");
        await AssertError(host, "/v1/completions", "{\"model\": \"a\", \"prompt\": [5], \"top_k\": -5}", 400, "invalid_request_error", "top_k");
        await AssertError(host, "/v1/completions", "{\"model\": \"a\", \"prompt\": [5], \"n\": 0}", 400, "invalid_request_error", "n must be");
        await AssertError(host, "/v1/completions", "{\"model\": \"a\", \"prompt\": [5], \"max_tokens\": \"many\"}", 400, "invalid_request_error", "max_tokens");
        await AssertError(host, "/v1/completions", "{\"model\": \"a\", \"prompt\": [5], \"stop\": \"x\"}", 400, "invalid_request_error", "tokenizer");

        var (status, body) = await host.PostAsync("/v1/completions", $"{{\"model\": \"a\", {ok}, \"max_tokens\": 3, \"return_token_ids\": true}}");
        Assert.Equal(200, status);
        Assert.Equal(3, Ints(body["choices"]![0]!["token_ids"]).Length);
        var health = await host.Http.GetAsync("/health");
        Assert.Equal(200, (int)health.StatusCode);
    }

    [Fact]
    public async Task ModelsListsBaseAndAdaptersAndMetricsArePrometheusText()
    {
        await using var host = await StartAsync();
        await host.PostAsync("/v1/completions", Completion("b", new[] { 5, 6, 7 }, 4));
        var models = JsonNode.Parse(await host.Http.GetStringAsync("/v1/models"))!;
        Assert.Equal(new[] { "llama-tiny", "a", "b", "c" }, ((JsonArray)models["data"]!).Select(m => m!["id"]!.GetValue<string>()).ToArray());
        Assert.Equal("llama-tiny", models["data"]![1]!["parent"]!.GetValue<string>());
        var metrics = await host.Http.GetStringAsync("/metrics");
        Assert.Contains("# TYPE peft_requests_total counter", metrics);
        Assert.Contains("\npeft_requests_total 1\n", metrics);
        Assert.Contains("\npeft_generation_tokens_total 4\n", metrics);
        Assert.Contains("\npeft_adapters_loaded 3\n", metrics);
        Assert.Contains("\npeft_queue_length 0\n", metrics);
        Assert.Contains("peft_batch_size", metrics);
        Assert.Contains("peft_generation_tokens_per_second", metrics);
        var bytes = metrics.Split('\n').Single(l => l.StartsWith("peft_adapter_memory_bytes ", StringComparison.Ordinal));
        Assert.True(long.Parse(bytes.Split(' ')[1]) > 0);
    }
}
