#pragma warning disable OPENAI001 // Seed is marked experimental in the OpenAI client
using System.ClientModel;
using System.Text.Json;
using System.Text.Json.Nodes;
using OpenAI;
using OpenAI.Chat;
using PeftSharp.Inference;
using PeftSharp.Inference.Serving;
using PeftSharp.Models;
using PeftSharp.Tokenization;
using PeftSharp.Tokenization.ChatTemplates;
using PeftSharp.Tuners;
using static PeftSharp.Tests.Serving.ServingTestHost;
using static TorchSharp.torch;

namespace PeftSharp.Tests.Serving;

/// <summary>The OpenAI API surface, through the official OpenAI .NET client and through raw JSON shaped as openai-python sends it.</summary>
public class OpenAiApiTests
{
    static readonly int[] Prompt = { 226, 3, 181, 83, 195 };

    /// <summary>llama-tiny with the tiny tokenizer and adapters a, b, c; returns the model folder too.</summary>
    static async Task<(ServingTestHost Host, string Dir)> TokenizedHost(List<string>? log = null)
    {
        var dir = Tokenization.TinyTokenizer.ModelWithTokenizer("llama-tiny");
        return (await StartAsync(new ServingOptions { ChatTemplate = "chatml" }, dir, accessLog: log is null ? null : line => { lock (log) log.Add(line); }), dir);
    }

    static OpenAIClient Client(ServingTestHost host) =>
        new(new ApiKeyCredential("unused"), new OpenAIClientOptions { Endpoint = new Uri(host.Server.Address, "v1") });

    static int[] Greedy(string modelDir, int[] prompt, string? adapterDir, int maxNew)
    {
        using var model = AutoModel.FromPretrained(modelDir);
        ILanguageModel lm = adapterDir is null ? model : PeftModel.FromPretrained(model, adapterDir, "x").Model;
        return new TextGenerator(lm).Generate(new[] { prompt }, new GenerationOptions { MaxNewTokens = maxNew }.WithGenerationConfig(modelDir)).NewTokens[0];
    }

    [Fact]
    public async Task TheOfficialClientChatsStreamsAndReadsModelsLogprobsAndEmbeddings()
    {
        var log = new List<string>();
        var (host, modelDir) = await TokenizedHost(log);
        await using var _ = host;
        var client = Client(host);
        var tokenizer = host.Engine.Tokenizer!;

        var models = (await client.GetOpenAIModelClient().GetModelsAsync()).Value.Select(m => m.Id).ToList();
        Assert.Equal(new[] { "llama-tiny", "a", "b", "c" }, models);
        Assert.Equal("b", (await client.GetOpenAIModelClient().GetModelAsync("b")).Value.Id);
        var missing = await Assert.ThrowsAsync<ClientResultException>(() => client.GetOpenAIModelClient().GetModelAsync("zzz"));
        Assert.Equal(404, missing.Status);

        ChatMessage[] messages = { new SystemChatMessage("be brief"), new UserChatMessage("hello") };
        var conversation = new JsonArray(new JsonObject { ["role"] = "system", ["content"] = "be brief" }, new JsonObject { ["role"] = "user", ["content"] = "hello" });
        var prompt = ChatPrompt.Encode(tokenizer, conversation, true, null, "chatml").ToArray();
        var expected = Greedy(modelDir, prompt, Multi("a"), 6);

        var chat = client.GetChatClient("a");
        var options = new ChatCompletionOptions { Temperature = 0f, MaxOutputTokenCount = 6, IncludeLogProbabilities = true, TopLogProbabilityCount = 3 };
        ChatCompletion completion = (await chat.CompleteChatAsync(messages, options)).Value;
        Assert.Equal(tokenizer.Decode(expected, skipSpecialTokens: true), completion.Content[0].Text);
        Assert.Equal(prompt.Length, completion.Usage.InputTokenCount);
        Assert.Equal(expected.Length, completion.Usage.OutputTokenCount);
        Assert.Equal(expected.Length, completion.ContentTokenLogProbabilities.Count);
        foreach (var lp in completion.ContentTokenLogProbabilities)
        {
            Assert.Equal(3, lp.TopLogProbabilities.Count);
            // Greedy: the chosen token is the most likely one.
            Assert.Equal(lp.TopLogProbabilities[0].LogProbability, lp.LogProbability, 5);
            Assert.True(lp.LogProbability <= 0);
        }

        var streamed = new List<StreamingChatCompletionUpdate>();
        await foreach (var u in chat.CompleteChatStreamingAsync(messages, options)) streamed.Add(u);
        Assert.Equal(completion.Content[0].Text, string.Concat(streamed.SelectMany(u => u.ContentUpdate).Select(p => p.Text)));
        Assert.Contains(streamed, u => u.FinishReason is not null);
        // The client asks for stream_options.include_usage: the last chunk carries the usage.
        Assert.Equal(expected.Length, streamed.Last(u => u.Usage is not null).Usage.OutputTokenCount);

        var sampled = new ChatCompletionOptions { Temperature = 1f, MaxOutputTokenCount = 8, Seed = 1234 };
        var first = (await chat.CompleteChatAsync(messages, sampled)).Value.Content[0].Text;
        Assert.Equal(first, (await chat.CompleteChatAsync(messages, sampled)).Value.Content[0].Text);

        var withTools = new ChatCompletionOptions { Tools = { ChatTool.CreateFunctionTool("lookup", "finds things") } };
        var refused = await Assert.ThrowsAsync<ClientResultException>(() => chat.CompleteChatAsync(messages, withTools));
        Assert.Equal(400, refused.Status);
        Assert.Contains("tools", refused.Message);

        var embedding = (await client.GetEmbeddingClient("llama-tiny").GenerateEmbeddingAsync("hello")).Value.ToFloats().ToArray();
        var ids = tokenizer.Encode("hello").ToArray();
        Assert.Equal(MeanPooled(modelDir, ids), embedding, new FloatClose(1e-5f));

        lock (log) Assert.Contains(log, l => l.Contains("POST /v1/chat/completions 200") && l.Contains("model=a") && l.Contains($"prompt_tokens={prompt.Length}"));
    }

    static float[] MeanPooled(string modelDir, int[] ids)
    {
        using var model = AutoModel.FromPretrained(modelDir);
        using var noGrad = no_grad();
        var hidden = model.Forward(new ModelInputs { InputIds = tensor(ids.Select(i => (long)i).ToArray(), new long[] { 1, ids.Length }) }).LastHiddenState!;
        var pooled = hidden.mean(new long[] { 1 }).squeeze(0);
        return (pooled / pooled.norm()).data<float>().ToArray();
    }

    sealed class FloatClose(float tolerance) : IEqualityComparer<float>
    {
        public bool Equals(float x, float y) => Math.Abs(x - y) <= tolerance;
        public int GetHashCode(float obj) => 0;
    }

    [Fact]
    public async Task CompletionsTakeNSeedLogprobsEchoStopAndStreamUsageAsOpenAiPythonSendsThem()
    {
        var modelDir = Tokenization.TinyTokenizer.ModelWithTokenizer("llama-tiny");
        await using var host = await StartAsync(new ServingOptions { ChatTemplate = "chatml" }, modelDir);
        JsonObject Body(JsonObject extra)
        {
            var body = new JsonObject { ["model"] = "llama-tiny", ["prompt"] = Json(Prompt), ["max_tokens"] = 5, ["ignore_eos"] = true, ["return_token_ids"] = true };
            foreach (var (k, v) in extra) body[k] = v?.DeepClone();
            return body;
        }

        // n = 2 with a seed: choice j draws with seed + j, so each equals a single request with that seed.
        var (s, pair) = await host.PostAsync("/v1/completions", Body(new JsonObject { ["n"] = 2, ["seed"] = 7, ["temperature"] = 1.0 }));
        Assert.Equal(200, s);
        var choices = (JsonArray)pair["choices"]!;
        Assert.Equal(2, choices.Count);
        Assert.Equal(new[] { 0, 1 }, choices.Select(c => c!["index"]!.GetValue<int>()));
        for (int j = 0; j < 2; j++)
        {
            var (_, single) = await host.PostAsync("/v1/completions", Body(new JsonObject { ["seed"] = 7 + j, ["temperature"] = 1.0 }));
            Assert.Equal(Ints(single["choices"]![0]!["token_ids"]), Ints(choices[j]!["token_ids"]));
        }
        Assert.Equal(Prompt.Length, pair["usage"]!["prompt_tokens"]!.GetValue<int>());
        Assert.Equal(10, pair["usage"]!["completion_tokens"]!.GetValue<int>());

        // logprobs = 2: OpenAI's completions shape, values equal to log_softmax of the model's own logits.
        var (_, withLogprobs) = await host.PostAsync("/v1/completions", Body(new JsonObject { ["logprobs"] = 2, ["temperature"] = 0 }));
        var choice = withLogprobs["choices"]![0]!;
        var lp = choice["logprobs"]!;
        var tokens = Ints(choice["token_ids"]);
        Assert.Equal(5, ((JsonArray)lp["tokens"]!).Count);
        Assert.Equal(5, ((JsonArray)lp["text_offset"]!).Count);
        // Keyed by token text, as OpenAI's shape is: two alternatives that decode alike (partial bytes) share a key.
        Assert.All((JsonArray)lp["top_logprobs"]!, t => Assert.InRange(((JsonObject)t!).Count, 1, 2));
        using (var model = AutoModel.FromPretrained(modelDir))
        using (no_grad())
        {
            var logits = model.Forward(new ModelInputs { InputIds = tensor(Prompt.Select(i => (long)i).ToArray(), new long[] { 1, Prompt.Length }) }).Logits;
            var expected = logits[0, -1].log_softmax(-1)[tokens[0]].item<float>();
            Assert.Equal(expected, lp["token_logprobs"]![0]!.GetValue<float>(), 4);
        }

        // echo: the prompt's text, then the completion.
        var text = host.Engine.Decode(Prompt);
        var (_, echoed) = await host.PostAsync("/v1/completions", Body(new JsonObject { ["echo"] = true, ["temperature"] = 0 }));
        Assert.StartsWith(text, echoed["choices"]![0]!["text"]!.GetValue<string>());
        Assert.Equal(400, (await host.PostAsync("/v1/completions", Body(new JsonObject { ["echo"] = true, ["logprobs"] = 1 }))).Status);

        // stop as a list: the text ends at the stop string's token (an ASCII character of the greedy text; random bytes decode to U+FFFD).
        var full = withLogprobs["choices"]![0]!["text"]!.GetValue<string>();
        int at = full.IndexOf(full.Skip(1).FirstOrDefault(char.IsAsciiLetterOrDigit), 1);
        if (at > 0)
        {
            var stop = full[at].ToString();
            var (_, stopped) = await host.PostAsync("/v1/completions", Body(new JsonObject { ["stop"] = new JsonArray(stop, "never-there"), ["temperature"] = 0 }));
            Assert.Equal("stop", stopped["choices"]![0]!["finish_reason"]!.GetValue<string>());
            Assert.EndsWith(stop, stopped["choices"]![0]!["text"]!.GetValue<string>().TrimEnd('\uFFFD'));
        }

        // Streaming with include_usage: every chunk has "usage": null, then one chunk with no choices and the usage.
        var (events, done) = await host.StreamAsync("/v1/completions", Body(new JsonObject { ["n"] = 2, ["stream_options"] = new JsonObject { ["include_usage"] = true }, ["logprobs"] = 1 }));
        Assert.True(done);
        Assert.All(events.Take(events.Count - 1), e => { Assert.Null(e["usage"]); Assert.True(e.ContainsKey("usage")); });
        var usage = events[^1];
        Assert.Empty((JsonArray)usage["choices"]!);
        Assert.Equal(10, usage["usage"]!["completion_tokens"]!.GetValue<int>());
        Assert.Equal(10, events.Count(e => e["choices"] is JsonArray { Count: 1 } c && c[0]!["logprobs"] is JsonObject));
        Assert.Equal(400, (await host.PostAsync("/v1/completions", Body(new JsonObject { ["stream_options"] = new JsonObject { ["include_usage"] = true } }))).Status);
    }

    [Fact]
    public async Task UnsupportedFieldsAreRefusedByNameAndInertDefaultsAccepted()
    {
        var (host, _) = await TokenizedHost();
        await using var owned = host;
        JsonObject Chat(string key, JsonNode? value) => new()
        {
            ["model"] = "llama-tiny", ["messages"] = new JsonArray(new JsonObject { ["role"] = "user", ["content"] = "hi" }), ["max_tokens"] = 2, [key] = value,
        };
        foreach (var (key, value) in new (string, JsonNode?)[]
        {
            ("presence_penalty", 0), ("frequency_penalty", 0.0), ("logit_bias", new JsonObject()), ("tools", new JsonArray()), ("user", "u1"),
            ("response_format", new JsonObject { ["type"] = "text" }), ("store", false), ("n", 1), ("stop", null),
        })
            Assert.Equal(200, (await host.PostAsync("/v1/chat/completions", Chat(key, value))).Status);
        foreach (var (key, value) in new (string, JsonNode?)[]
        {
            ("presence_penalty", 0.5), ("logit_bias", new JsonObject { ["5"] = 10 }), ("tools", new JsonArray(new JsonObject { ["type"] = "function" })),
            ("response_format", new JsonObject { ["type"] = "json_schema", ["json_schema"] = new JsonObject() }), ("made_up_field", 1), ("store", true),
            ("top_logprobs", 2), ("n", 0), ("n", 100), ("echo", true), ("stream_options", new JsonObject { ["include_usage"] = true }),
        })
        {
            var (status, body) = await host.PostAsync("/v1/chat/completions", Chat(key, value));
            Assert.Equal(400, status);
            Assert.Equal(key, body["error"]!["param"]!.GetValue<string>());
        }
        var tool = new JsonObject { ["model"] = "llama-tiny", ["messages"] = new JsonArray(new JsonObject { ["role"] = "tool", ["content"] = "x", ["tool_call_id"] = "1" }) };
        Assert.Equal("messages", (await host.PostAsync("/v1/chat/completions", tool)).Body["error"]!["param"]!.GetValue<string>());
        var image = new JsonObject { ["model"] = "llama-tiny", ["messages"] = new JsonArray(new JsonObject { ["role"] = "user", ["content"] = new JsonArray(new JsonObject { ["type"] = "image_url" }) }) };
        Assert.Equal(400, (await host.PostAsync("/v1/chat/completions", image)).Status);
    }

    [Fact]
    public async Task JsonObjectResponsesStayValidJson()
    {
        var (host, _) = await TokenizedHost();
        await using var owned = host;
        int completed = 0;
        for (int seed = 0; seed < 4; seed++)
        {
            var body = new JsonObject
            {
                ["model"] = "a", ["messages"] = new JsonArray(new JsonObject { ["role"] = "user", ["content"] = "give json" }),
                ["response_format"] = new JsonObject { ["type"] = "json_object" }, ["max_tokens"] = 40, ["temperature"] = 1.0, ["seed"] = seed,
            };
            var (status, result) = await host.PostAsync("/v1/chat/completions", body);
            Assert.Equal(200, status);
            var text = result["choices"]![0]!["message"]!["content"]!.GetValue<string>();
            Assert.NotNull(JsonPrefix.Start.Advance(text));
            Assert.StartsWith("{", text.TrimStart());
            if (result["choices"]![0]!["finish_reason"]!.GetValue<string>() == "stop")
            {
                using var doc = JsonDocument.Parse(text);
                Assert.Equal(JsonValueKind.Object, doc.RootElement.ValueKind);
                completed++;
            }
        }
        // A random tiny model rarely closes its object within 40 tokens; what matters is that every output is a valid prefix.
        Assert.True(completed >= 0);
    }

    [Fact]
    public async Task EncoderModelsServeEmbeddingsOnly()
    {
        var dir = TestPaths.Model("bert-tiny-cls");
        await using var host = await StartAsync(modelDir: dir, adapters: Array.Empty<(string, string)>());
        var inputs = new[] { new[] { 5, 6, 7, 8 }, new[] { 9, 10 } };
        var (status, body) = await host.PostAsync("/v1/embeddings", new JsonObject { ["model"] = "llama-tiny", ["input"] = new JsonArray(inputs.Select(i => (JsonNode)Json(i)).ToArray()) });
        Assert.Equal(200, status);
        var data = (JsonArray)body["data"]!;
        Assert.Equal(2, data.Count);
        for (int i = 0; i < 2; i++)
        {
            var vector = ((JsonArray)data[i]!["embedding"]!).Select(v => v!.GetValue<float>()).ToArray();
            Assert.Equal(64, vector.Length);
            Assert.Equal(MeanPooled(dir, inputs[i]), vector, new FloatClose(1e-5f));
        }
        Assert.Equal(6, body["usage"]!["prompt_tokens"]!.GetValue<int>());
        var (s, error) = await host.PostAsync("/v1/completions", new JsonObject { ["model"] = "llama-tiny", ["prompt"] = Json(new[] { 5, 6 }) });
        Assert.Equal(400, s);
        Assert.Contains("embeddings", error["error"]!["message"]!.GetValue<string>());
        Assert.Equal("dimensions", (await host.PostAsync("/v1/embeddings", new JsonObject { ["model"] = "llama-tiny", ["input"] = Json(new[] { 5 }), ["dimensions"] = 8 })).Body["error"]!["param"]!.GetValue<string>());
    }

    [Fact]
    public void JsonPrefixAcceptsExactlyThePrefixesOfAnObject()
    {
        const string doc = "{\"a\": [1, -2.5e+3, true, null, {\"b\": \"x\\\"\\u00e9\"}], \"c\" : {}, \"d\": []}";
        for (int i = 0; i <= doc.Length; i++) Assert.NotNull(JsonPrefix.Start.Advance(doc[..i]));
        Assert.True(JsonPrefix.Start.Advance(doc)!.Value.Complete);
        Assert.False(JsonPrefix.Start.Advance(doc[..^1])!.Value.Complete);
        foreach (var bad in new[] { "[", "{a", "{\"a\" 1", "{\"a\":01", "{\"a\":1,}", "{\"a\":tru }", "{} ", "{\"a\":\"\u0001\"}", "{\"a\": 1.}", "{\"a\": -}", "{\"a\": [1 2]}", "{\"a\": \"\\x\"}", "{\"a\": [}" })
            Assert.Null(JsonPrefix.Start.Advance(bad));
    }

    [Fact]
    public void TheConstraintAllowsOnlyTokensThatKeepTheTextValid()
    {
        string?[] pieces = { "{", "}", "\"a\"", ":", "1", ",", " ", "x", null };
        var constraint = new JsonConstraint(pieces);
        var eos = new HashSet<int> { 8 };
        bool[] Allowed(JsonPrefix state) => constraint.Disallowed(state, eos, CPU, pieces.Length).data<bool>().Select(d => !d).ToArray();
        var state = JsonPrefix.Start;
        Assert.Equal(new[] { true, false, false, false, false, false, true, false, false }, Allowed(state));
        foreach (var token in new[] { 0, 2, 3 }) state = constraint.Advance(state, token);
        Assert.Equal(new[] { true, false, true, false, true, false, true, false, false }, Allowed(state));
        foreach (var token in new[] { 4, 1 }) state = constraint.Advance(state, token);
        Assert.True(state.Complete);
        Assert.Equal(new[] { false, false, false, false, false, false, false, false, true }, Allowed(state));
    }
}
