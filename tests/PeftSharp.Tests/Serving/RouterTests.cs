using System.Net.Http.Json;
using System.Text;
using System.Text.Json.Nodes;
using PeftSharp.Inference.Serving;
using PeftSharp.Server.Routing;
using static PeftSharp.Tests.Serving.ServingTestHost;

namespace PeftSharp.Tests.Serving;

/// <summary>
/// `peft route` on loopback in front of two `peft serve` replicas sharing an adapter root: each adapter lands on one
/// replica, loads fan out, /v1/models is the union, streams pass through, a killed replica's adapters move without
/// losing a request, and with no replica left the client gets OpenAI-style 503s.
/// </summary>
public class RouterTests
{
    static readonly string[] Adapters = Enumerable.Range(0, 8).Select(i => $"ad{i}").ToArray();

    static string SharedRoot()
    {
        var root = TestPaths.TempDir();
        for (int i = 0; i < Adapters.Length; i++)
        {
            var target = Path.Combine(root, Adapters[i]);
            Directory.CreateDirectory(target);
            foreach (var f in Directory.GetFiles(Multi(new[] { "a", "b", "c" }[i % 3])))
                File.Copy(f, Path.Combine(target, Path.GetFileName(f)));
        }
        return root;
    }

    static JsonObject Completion(string model) => new()
    {
        ["model"] = model, ["prompt"] = Json(new[] { 226, 3, 181 }), ["max_tokens"] = 2, ["temperature"] = 0,
    };

    static async Task<(int Status, string Replica, JsonObject Body)> Post(HttpClient http, string path, JsonObject body)
    {
        using var response = await http.PostAsync(path, new StringContent(body.ToJsonString(), Encoding.UTF8, "application/json"));
        var text = await response.Content.ReadAsStringAsync();
        var replica = response.Headers.TryGetValues(AdapterRouter.ReplicaHeader, out var v) ? v.First() : "";
        var json = response.Content.Headers.ContentType?.MediaType == "application/json" ? JsonNode.Parse(text) as JsonObject : null;
        return ((int)response.StatusCode, replica, json ?? new JsonObject { ["text"] = text });
    }

    [Fact]
    public async Task Adapters_stick_to_one_replica_and_move_when_it_dies_without_losing_requests()
    {
        var root = SharedRoot();
        var options = new ServingOptions { AdapterRoot = root, MaxLoras = 8 };
        var one = await StartAsync(options, adapters: Array.Empty<(string, string)>());
        var two = await StartAsync(options, adapters: Array.Empty<(string, string)>());
        await using var router = await AdapterRouter.StartAsync(new[] { one.Server.Address, two.Server.Address }, "127.0.0.1", 0,
            new RouterOptions { HealthInterval = TimeSpan.FromMilliseconds(200), HealthTimeout = TimeSpan.FromSeconds(2) });
        using var http = new HttpClient { BaseAddress = router.Address, Timeout = TimeSpan.FromSeconds(60) };
        var stopped = new HashSet<ServingTestHost>();
        async Task Kill(ServingTestHost host) { stopped.Add(host); await host.DisposeAsync(); }
        try
        {
            // load_lora_adapter fans out: both replicas can serve every adapter from the shared root.
            foreach (var a in Adapters)
            {
                var (status, _, body) = await Post(http, "/v1/load_lora_adapter", new JsonObject { ["lora_name"] = a, ["lora_path"] = a });
                Assert.True(status == 200, body.ToJsonString());
            }
            Assert.All(new[] { one, two }, r => Assert.Equal(Adapters.OrderBy(x => x), r.Engine.AdapterNames.OrderBy(x => x)));
            var models = await http.GetFromJsonAsync<JsonObject>("/v1/models");
            Assert.Equal(new[] { "llama-tiny" }.Concat(Adapters).OrderBy(x => x), models!["data"]!.AsArray().Select(m => m!["id"]!.GetValue<string>()).OrderBy(x => x));

            // Sequential requests: each adapter always on one replica, its home on the ring.
            var placed = new Dictionary<string, HashSet<string>>();
            foreach (var round in Enumerable.Range(0, 3))
                foreach (var a in Adapters)
                {
                    var (status, replica, body) = await Post(http, "/v1/completions", Completion(a));
                    Assert.True(status == 200, body.ToJsonString());
                    (placed.TryGetValue(a, out var set) ? set : placed[a] = new()).Add(replica);
                }
            Assert.All(Adapters, a => Assert.Equal(new[] { router.Ring.Home(a)!.Address.ToString() }, placed[a]));

            // Streaming passes through event by event.
            var stream = Completion(Adapters[0]); stream["stream"] = true;
            using (var request = new HttpRequestMessage(HttpMethod.Post, "/v1/completions") { Content = JsonContent.Create(stream) })
            using (var response = await http.SendAsync(request, HttpCompletionOption.ResponseHeadersRead))
            {
                Assert.Equal("text/event-stream", response.Content.Headers.ContentType?.MediaType);
                var text = await response.Content.ReadAsStringAsync();
                Assert.EndsWith("data: [DONE]", text.TrimEnd());
            }

            // Kill the replica that holds ad0 while four clients keep sending: every request is answered, and ad0 moves.
            var victim = router.Ring.Home(Adapters[0])!;
            var (dying, survivor) = victim.Address == one.Server.Address ? (one, two) : (two, one);
            var failures = new List<string>();
            var served = new List<(string Adapter, string Replica, bool AfterKill)>();
            bool killed = false;
            var clients = Enumerable.Range(0, 4).Select(c => Task.Run(async () =>
            {
                for (int i = 0; i < 12; i++)
                {
                    var a = Adapters[(c * 3 + i) % Adapters.Length];
                    bool after = Volatile.Read(ref killed);
                    var (status, replica, body) = await Post(http, "/v1/completions", Completion(a));
                    lock (served)
                    {
                        if (status != 200) failures.Add($"{a}: {status} {body.ToJsonString()}");
                        else served.Add((a, replica, after));
                    }
                }
            })).ToList();
            await Task.Delay(300);
            await Kill(dying);
            Volatile.Write(ref killed, true);
            await Task.WhenAll(clients);
            Assert.Empty(failures);
            Assert.Equal(48, served.Count);
            Assert.All(served.Where(s => s.AfterKill), s => Assert.Equal(survivor.Server.Address.ToString(), s.Replica));
            var (st, movedTo, _) = await Post(http, "/v1/completions", Completion(Adapters[0]));
            Assert.Equal(200, st);
            Assert.Equal(survivor.Server.Address.ToString(), movedTo);
            Assert.False(victim.Healthy);

            // No replica left: OpenAI-style errors, not hangs.
            await Kill(survivor);
            await router.CheckHealthAsync();
            var (none, _, error) = await Post(http, "/v1/completions", Completion(Adapters[1]));
            Assert.Equal(503, none);
            Assert.Equal("service_unavailable", error["error"]!["type"]!.GetValue<string>());
            Assert.Contains("all 2 are down", error["error"]!["message"]!.GetValue<string>());
            using var modelsDown = await http.GetAsync("/v1/models");
            Assert.Equal(503, (int)modelsDown.StatusCode);
        }
        finally
        {
            foreach (var host in new[] { one, two }.Where(h => !stopped.Contains(h))) await host.DisposeAsync();
        }
    }

    [Fact]
    public void A_hot_adapter_spills_to_a_second_replica_under_bounded_load()
    {
        var replicas = Enumerable.Range(0, 3).Select(i => new Replica(new Uri($"http://10.0.0.{i + 1}:8000/"))).ToList();
        var ring = new ReplicaRing(replicas, loadFactor: 1.25);
        var home = ring.Home("hot")!;
        // Six concurrent requests for one adapter: the home takes its bounded share, the rest spill to other replicas.
        var taken = Enumerable.Range(0, 6).Select(_ => ring.Acquire("hot")!).ToList();
        Assert.Equal(home, taken[0]);
        Assert.True(taken.Count(r => r == home) <= 3, string.Join(", ", taken));
        Assert.True(taken.Distinct().Count() >= 2);
        foreach (var r in taken) ring.Release(r);
        Assert.All(replicas, r => Assert.Equal(0, r.InFlight));
        // A dead home: the key moves, other keys whose home is alive stay put.
        var keys = Enumerable.Range(0, 50).Select(i => $"adapter-{i}").ToList();
        var before = keys.ToDictionary(k => k, k => ring.Home(k));
        home.Healthy = false;
        foreach (var k in keys)
            if (before[k] == home) Assert.NotEqual(home, ring.Home(k));
            else Assert.Equal(before[k], ring.Home(k));
    }
}
