using System.Net.Http.Json;
using System.Text;
using System.Text.Json.Nodes;
using PeftSharp.Inference.Serving;
using PeftSharp.Server;

namespace PeftSharp.Tests.Serving;

/// <summary>An engine and an HTTP server on a free loopback port, with a real HttpClient.</summary>
public sealed class ServingTestHost : IAsyncDisposable
{
    public ServingEngine Engine { get; }
    public OpenAiServer Server { get; }
    public HttpClient Http { get; }

    ServingTestHost(ServingEngine engine, OpenAiServer server)
    {
        Engine = engine;
        Server = server;
        // Generous: on a loaded 2-core machine a queued request can wait minutes; a real hang still fails.
        Http = new HttpClient { BaseAddress = server.Address, Timeout = TimeSpan.FromMinutes(5) };
    }

    public static string Multi(string name) => TestPaths.Data("multi", "llama-tiny", name);

    /// <summary>llama-tiny (or <paramref name="modelDir"/>) with adapters a, b, c of the multi fixture unless others are given.</summary>
    public static async Task<ServingTestHost> StartAsync(ServingOptions? options = null, string? modelDir = null, IEnumerable<(string, string)>? adapters = null, Action<string>? accessLog = null)
    {
        var engine = ServingEngine.FromFolder(modelDir ?? TestPaths.Model("llama-tiny"), (options ?? new ServingOptions()) with { ModelName = "llama-tiny" },
            adapters ?? new[] { ("a", Multi("a")), ("b", Multi("b")), ("c", Multi("c")) });
        var server = await OpenAiServer.StartAsync(engine, "127.0.0.1", 0, TimeSpan.FromSeconds(5), accessLog: accessLog ?? (_ => { }));
        return new ServingTestHost(engine, server);
    }

    public async Task<(int Status, JsonObject Body)> PostAsync(string path, string json)
    {
        using var response = await Http.PostAsync(path, new StringContent(json, Encoding.UTF8, "application/json"));
        var text = await response.Content.ReadAsStringAsync();
        var parsed = response.Content.Headers.ContentType?.MediaType == "application/json" ? JsonNode.Parse(text) as JsonObject : null;
        return ((int)response.StatusCode, parsed ?? new JsonObject { ["text"] = text });
    }

    public Task<(int Status, JsonObject Body)> PostAsync(string path, JsonObject body) => PostAsync(path, body.ToJsonString());

    /// <summary>Posts a streaming request and returns the parsed data events (without [DONE]) and whether [DONE] came.</summary>
    public async Task<(List<JsonObject> Events, bool Done)> StreamAsync(string path, JsonObject body)
    {
        body["stream"] = true;
        using var request = new HttpRequestMessage(HttpMethod.Post, path) { Content = JsonContent.Create(body) };
        using var response = await Http.SendAsync(request, HttpCompletionOption.ResponseHeadersRead);
        Assert.Equal(200, (int)response.StatusCode);
        Assert.Equal("text/event-stream", response.Content.Headers.ContentType?.MediaType);
        using var reader = new StreamReader(await response.Content.ReadAsStreamAsync());
        var events = new List<JsonObject>();
        bool done = false;
        while (await reader.ReadLineAsync() is { } line)
        {
            if (!line.StartsWith("data: ", StringComparison.Ordinal)) continue;
            var data = line["data: ".Length..];
            if (data == "[DONE]") { done = true; continue; }
            events.Add((JsonObject)JsonNode.Parse(data)!);
        }
        return (events, done);
    }

    public static int[] Ints(JsonNode? node) => ((JsonArray)node!).Select(x => x!.GetValue<int>()).ToArray();

    public static JsonArray Json(IEnumerable<int> ids) => new(ids.Select(i => (JsonNode)i).ToArray());

    public async ValueTask DisposeAsync()
    {
        Http.Dispose();
        await Server.DisposeAsync();
        Engine.Dispose();
    }
}
