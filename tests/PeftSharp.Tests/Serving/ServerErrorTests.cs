using System.Diagnostics;
using System.Runtime.InteropServices;
using System.Text;
using System.Text.Json.Nodes;
using PeftSharp.Inference.Serving;
using PeftSharp.Runtime;
using static PeftSharp.Tests.Serving.ServingTestHost;

namespace PeftSharp.Tests.Serving;

/// <summary>Hostile and malformed requests: each one a 4xx in OpenAI's error format, naming the field, without stalling the server.</summary>
public class ServerErrorTests
{
    [DllImport("libc", SetLastError = true)]
    static extern int mkfifo([MarshalAs(UnmanagedType.LPUTF8Str)] string path, uint mode);

    static JsonObject Completion(string model = "llama-tiny") => new() { ["model"] = model, ["prompt"] = Json(new[] { 226, 3, 181 }), ["max_tokens"] = 2 };

    static void AssertError(int status, JsonObject body, int expectedStatus, string? param = null, string? message = null)
    {
        Assert.Equal(expectedStatus, status);
        var error = Assert.IsType<JsonObject>(body["error"]);
        Assert.False(string.IsNullOrEmpty(error["message"]!.GetValue<string>()));
        Assert.False(string.IsNullOrEmpty(error["type"]!.GetValue<string>()));
        Assert.True(error.ContainsKey("param") && error.ContainsKey("code"));
        if (param is not null) Assert.Equal(param, error["param"]?.GetValue<string>());
        if (message is not null) Assert.Contains(message, error["message"]!.GetValue<string>());
    }

    async Task<(int, JsonObject)> Send(ServingTestHost host, HttpMethod method, string path, byte[]? body = null)
    {
        using var request = new HttpRequestMessage(method, path);
        if (body is not null) request.Content = new ByteArrayContent(body) { Headers = { ContentType = new("application/json") } };
        using var response = await host.Http.SendAsync(request);
        var text = await response.Content.ReadAsStringAsync();
        Assert.Equal("application/json", response.Content.Headers.ContentType?.MediaType);
        return ((int)response.StatusCode, (JsonObject)JsonNode.Parse(text)!);
    }

    [Fact]
    public async Task UnknownRoutesWrongMethodsAndMalformedBodiesGetOpenAiErrors()
    {
        await using var host = await StartAsync();
        var (s, b) = await Send(host, HttpMethod.Get, "/v1/nope");
        AssertError(s, b, 404, message: "/v1/nope");
        Assert.Equal("not_found_error", b["error"]!["type"]!.GetValue<string>());
        (s, b) = await Send(host, HttpMethod.Get, "/v1/completions");
        AssertError(s, b, 405, message: "GET");
        (s, b) = await Send(host, HttpMethod.Delete, "/v1/models");
        AssertError(s, b, 405);

        var invalidUtf8 = Encoding.UTF8.GetBytes("{\"model\": \"llama-tiny\", \"prompt\": \"ab\"}");
        invalidUtf8[invalidUtf8.Length - 4] = 0xFF;
        (s, b) = await Send(host, HttpMethod.Post, "/v1/completions", invalidUtf8);
        AssertError(s, b, 400, message: "UTF-8");
        (s, b) = await Send(host, HttpMethod.Post, "/v1/completions", Encoding.UTF8.GetBytes("{\"model\": \"a\", \"model\": \"b\", \"prompt\": [1]}"));
        AssertError(s, b, 400, message: "Duplicate");
        (s, b) = await Send(host, HttpMethod.Post, "/v1/chat/completions", Encoding.UTF8.GetBytes(new string('[', 1000) + new string(']', 1000)));
        AssertError(s, b, 400);
        (s, b) = await Send(host, HttpMethod.Post, "/v1/completions", Encoding.UTF8.GetBytes("[1, 2]"));
        AssertError(s, b, 400, message: "JSON object");

        foreach (var (field, value) in new (string, JsonNode)[]
        {
            ("temperature", 1e-300), ("temperature", JsonNode.Parse("1e400")!), ("temperature", -1), ("temperature", 2.5), ("top_p", 0), ("top_p", "x"),
            ("max_tokens", 0), ("max_tokens", 1e12), ("max_tokens", 1.5), ("repetition_penalty", 1e-300), ("top_k", -5), ("seed", "x"), ("stop", 5),
        })
        {
            var body = Completion();
            body[field] = value.DeepClone();
            var (status, error) = await host.PostAsync("/v1/completions", body);
            AssertError(status, error, 400, field);
        }
        // The server still answers.
        Assert.Equal(200, (await host.PostAsync("/v1/completions", Completion())).Status);
    }

    [Fact]
    public async Task AdapterFoldersWithNonRegularFilesAndShadowingNamesAreRefused()
    {
        var root = TestPaths.TempDir();
        var fifoDir = Directory.CreateDirectory(Path.Combine(root, "fifo")).FullName;
        Assert.Equal(0, mkfifo(Path.Combine(fifoDir, "adapter_config.json"), Convert.ToUInt32("644", 8)));
        var weightsFifo = Directory.CreateDirectory(Path.Combine(root, "fifo2")).FullName;
        File.Copy(Path.Combine(Multi("a"), "adapter_config.json"), Path.Combine(weightsFifo, "adapter_config.json"));
        Assert.Equal(0, mkfifo(Path.Combine(weightsFifo, "adapter_model.safetensors"), Convert.ToUInt32("644", 8)));
        var good = Directory.CreateDirectory(Path.Combine(root, "good")).FullName;
        foreach (var f in Directory.GetFiles(Multi("b"))) File.Copy(f, Path.Combine(good, Path.GetFileName(f)));

        await using var host = await StartAsync(new ServingOptions { AdapterRoot = root });
        Task<(int, JsonObject)> Load(string name, string path) =>
            host.PostAsync("/v1/load_lora_adapter", new JsonObject { ["lora_name"] = name, ["lora_path"] = path });

        var clock = Stopwatch.StartNew();
        foreach (var dir in new[] { "fifo", "fifo2" })
        {
            var (status, body) = await Load("f", dir);
            AssertError(status, body, 400, "lora_path", "not a regular file");
        }
        Assert.True(clock.Elapsed < TimeSpan.FromSeconds(20), $"refusing FIFOs took {clock.Elapsed}");

        var (s, b) = await Load("llama-tiny", "good");
        AssertError(s, b, 400, "lora_name", "base model");
        (s, b) = await Load("a", "good");
        AssertError(s, b, 400, "lora_name", "already loaded");
        (s, b) = await host.PostAsync("/v1/completions", Completion("a"));
        Assert.Equal(200, s);
        Assert.Equal(new[] { "a", "b", "c" }, host.Engine.AdapterNames.OrderBy(n => n));
        Assert.Equal(200, (await Load("g", "good")).Item1);
    }

    [Fact]
    public async Task OversizedPromptsAreRefusedBeforeTokenizingAndMemoryComesBack()
    {
        var dir = Tokenization.TinyTokenizer.ModelWithTokenizer("llama-tiny");
        await using var host = await StartAsync(new ServingOptions { MaxPromptBytes = 64 << 10, ChatTemplate = "chatml" }, dir, Array.Empty<(string, string)>());
        var (s, b) = await host.PostAsync("/v1/completions", new JsonObject { ["model"] = "llama-tiny", ["prompt"] = new string('x', 70_000), ["max_tokens"] = 1 });
        AssertError(s, b, 400, "prompt", "65536");
        var messages = new JsonArray(new JsonObject { ["role"] = "user", ["content"] = new string('y', 40_000) }, new JsonObject { ["role"] = "user", ["content"] = new string('z', 40_000) });
        (s, b) = await host.PostAsync("/v1/chat/completions", new JsonObject { ["model"] = "llama-tiny", ["messages"] = messages });
        AssertError(s, b, 400, "messages", "65536");

        // A 4 MB prompt is over the body limit (2 x max prompt bytes + 1 MiB): refused from its Content-Length, unread.
        var huge = Encoding.UTF8.GetBytes(new JsonObject { ["model"] = "llama-tiny", ["prompt"] = new string('h', 4 << 20) }.ToJsonString());
        using (var request = new HttpRequestMessage(HttpMethod.Post, "/v1/completions") { Content = new ByteArrayContent(huge) { Headers = { ContentType = new("application/json") } } })
        {
            request.Headers.ExpectContinue = true;
            using var response = await host.Http.SendAsync(request);
            var error = (JsonObject)JsonNode.Parse(await response.Content.ReadAsStringAsync())!;
            AssertError((int)response.StatusCode, error, 413, message: "body");
        }

        // Bursts of eight 1 MB prompts (under the body limit, over the prompt cap): each refused before tokenizing,
        // quickly. The first burst warms the pools; later bursts add nothing (tokenizing 4 MB prompts in full once
        // left 2.6 GB behind).
        var prompt = Encoding.UTF8.GetBytes(new JsonObject { ["model"] = "llama-tiny", ["prompt"] = new string('p', 1 << 20), ["max_tokens"] = 1 }.ToJsonString());
        async Task Burst()
        {
            var clock = Stopwatch.StartNew();
            var burst = await Task.WhenAll(Enumerable.Range(0, 8).Select(_ => Send(host, HttpMethod.Post, "/v1/completions", prompt)));
            foreach (var (status, body) in burst) AssertError(status, body, 400, "prompt", "65536");
            Assert.True(clock.Elapsed < TimeSpan.FromSeconds(30), $"the burst took {clock.Elapsed}");
            Settle();
        }
        Settle();
        long idle = ProcessMemory.CurrentRss() ?? 0;
        await Burst();
        long warm = ProcessMemory.CurrentRss() ?? 0;
        for (int i = 0; i < 4; i++) await Burst();
        long after = ProcessMemory.CurrentRss() ?? 0;
        Assert.True(warm - idle < 200L << 20, $"RSS grew from {idle >> 20} MB to {warm >> 20} MB after the first burst");
        Assert.True(after - warm < 48L << 20, $"RSS grew from {warm >> 20} MB to {after >> 20} MB over four more bursts");
        Assert.Equal(200, (await host.PostAsync("/v1/completions", new JsonObject { ["model"] = "llama-tiny", ["prompt"] = "hello", ["max_tokens"] = 1 })).Status);
    }

    static void Settle()
    {
        System.Runtime.GCSettings.LargeObjectHeapCompactionMode = System.Runtime.GCLargeObjectHeapCompactionMode.CompactOnce;
        GC.Collect(2, GCCollectionMode.Forced, blocking: true, compacting: true);
        GC.WaitForPendingFinalizers();
        GC.Collect(2, GCCollectionMode.Forced, blocking: true, compacting: true);
        TorchRuntime.TrimMemory();
    }
}
