using System.Net;
using System.Text.Json;
using System.Text.Json.Nodes;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using Yarp.ReverseProxy.Forwarder;

namespace PeftSharp.Server.Routing;

/// <summary>Settings of <see cref="AdapterRouter"/>.</summary>
public sealed record RouterOptions
{
    /// <summary>How often each replica's /health is asked.</summary>
    public TimeSpan HealthInterval { get; init; } = TimeSpan.FromSeconds(2);
    /// <summary>How long a health check or a connection attempt may take before the replica counts as down.</summary>
    public TimeSpan HealthTimeout { get; init; } = TimeSpan.FromSeconds(1);
    /// <summary>Bounded-load factor: a replica takes at most this × the mean in-flight load before a key spills to the next one.</summary>
    public double LoadFactor { get; init; } = 1.25;
    /// <summary>Longest silence from a replica while it answers a request (a long generation streams, so this bounds gaps, not totals).</summary>
    public TimeSpan ActivityTimeout { get; init; } = TimeSpan.FromMinutes(10);
}

/// <summary>
/// <c>peft route</c>: an OpenAI-API reverse proxy (YARP's forwarder) in front of several `peft serve` replicas that share
/// an adapter root. Completions go to the replica that owns the request's <c>model</c> on a consistent-hash ring with
/// bounded loads (<see cref="ReplicaRing"/>), so each adapter stays resident on one replica and a hot one spills to a
/// second; streamed answers pass through as they come. /v1/models is the union of the replicas' lists,
/// load/unload_lora_adapter go to every replica. Health checks take a dead replica off the ring (its adapters move,
/// the others stay); a request whose replica cannot be reached before anything was answered is sent to the next one.
/// With no replica able to answer, the client gets 503 (or 502) in OpenAI's error format.
/// </summary>
public sealed class AdapterRouter : IAsyncDisposable
{
    readonly WebApplication _app;
    readonly HttpMessageInvoker _client;
    readonly HttpClient _health;
    readonly CancellationTokenSource _stop = new();
    readonly Task _healthLoop;

    /// <summary>Response header naming the replica that answered.</summary>
    public const string ReplicaHeader = "x-peft-replica";

    public ReplicaRing Ring { get; }
    public RouterOptions Options { get; }
    public Uri Address { get; private set; } = null!;

    AdapterRouter(WebApplication app, ReplicaRing ring, RouterOptions options)
    {
        _app = app; Ring = ring; Options = options;
        _client = new HttpMessageInvoker(new SocketsHttpHandler
        {
            UseProxy = false, AllowAutoRedirect = false, AutomaticDecompression = DecompressionMethods.None, UseCookies = false,
            ConnectTimeout = options.HealthTimeout, EnableMultipleHttp2Connections = true,
        });
        _health = new HttpClient(new SocketsHttpHandler { UseProxy = false, ConnectTimeout = options.HealthTimeout }) { Timeout = options.HealthTimeout };
        _healthLoop = Task.Run(HealthLoop);
    }

    public static async Task<AdapterRouter> StartAsync(IReadOnlyList<Uri> backends, string host = "127.0.0.1", int port = 8080,
        RouterOptions? options = null, CancellationToken cancellationToken = default)
    {
        options ??= new RouterOptions();
        if (backends.Count == 0) throw new ArgumentException("peft route needs at least one --backend URL");
        var ring = new ReplicaRing(backends.Select(b => new Replica(b)).ToList(), loadFactor: options.LoadFactor);
        var builder = WebApplication.CreateSlimBuilder();
        builder.Logging.SetMinimumLevel(LogLevel.Warning);
        builder.Services.AddHttpForwarder();
        builder.WebHost.ConfigureKestrel(k =>
        {
            k.Limits.MaxRequestBodySize = 4 * 1024 * 1024;
            k.Listen(host is "localhost" ? IPAddress.Loopback : IPAddress.Parse(host), port);
        });
        var app = builder.Build();
        var router = new AdapterRouter(app, ring, options);
        await router.CheckHealthAsync(cancellationToken);
        app.MapGet("/v1/models", router.Models);
        app.MapPost("/v1/load_lora_adapter", router.FanOut);
        app.MapPost("/v1/unload_lora_adapter", router.FanOut);
        app.MapGet("/health", (HttpContext ctx) => ring.Replicas.Any(r => r.Healthy)
            ? Results.Ok(new { healthy = ring.Replicas.Count(r => r.Healthy), replicas = ring.Replicas.Count })
            : Results.Json(ErrorBody("no healthy replica", 503), statusCode: 503));
        app.Map("/{**path}", router.Forward);
        await app.StartAsync(cancellationToken);
        router.Address = new Uri(app.Urls.First().Replace("0.0.0.0", "127.0.0.1").Replace("[::]", "[::1]"));
        return router;
    }

    // ---- completions and everything else: one replica, chosen by the model ----

    async Task Forward(HttpContext ctx)
    {
        var forwarder = ctx.RequestServices.GetRequiredService<IHttpForwarder>();
        // The body is read once so it can be sent again to another replica if the first cannot be reached.
        using var body = new MemoryStream();
        await ctx.Request.Body.CopyToAsync(body, ctx.RequestAborted);
        string key = ModelOf(body.GetBuffer().AsSpan(0, (int)body.Length)) ?? "";
        var tried = new HashSet<Replica>();
        while (true)
        {
            var replica = Ring.Acquire(key, tried);
            if (replica is null)
            {
                await WriteError(ctx, tried.Count == 0 ? 503 : 502, tried.Count == 0
                    ? $"no replica can take the request: all {Ring.Replicas.Count} are down"
                    : $"no replica could be reached for model '{key}' (tried {string.Join(", ", tried)})");
                return;
            }
            tried.Add(replica);
            var transformer = new RefusalTransformer(canRetry: Ring.Replicas.Any(r => r.Healthy && !tried.Contains(r)));
            ForwarderError error;
            try
            {
                body.Position = 0;
                ctx.Request.Body = body;
                ctx.Response.Headers[ReplicaHeader] = replica.Address.ToString();
                error = await forwarder.SendAsync(ctx, replica.Address.ToString().TrimEnd('/'), _client,
                    new ForwarderRequestConfig { ActivityTimeout = Options.ActivityTimeout }, transformer);
            }
            finally { Ring.Release(replica); }
            if (transformer.Refused is { } refusal)
            {
                // The replica declined before doing anything (draining: 503, queue full: 429): the next one gets the request.
                if (refusal == 503) replica.Healthy = false;
                ctx.Response.Clear();
                continue;
            }
            if (error == ForwarderError.None) return;
            // Nothing reached the client yet and the replica did not take the request: mark it down and try the next one.
            if (!ctx.Response.HasStarted && error is ForwarderError.Request or ForwarderError.RequestTimedOut)
            {
                replica.Healthy = false;
                ctx.Features.Set<IForwarderErrorFeature>(null);
                ctx.Response.Clear();
                continue;
            }
            if (!ctx.Response.HasStarted)
                await WriteError(ctx, 502, $"replica {replica} failed while answering ({error})");
            return;
        }
    }

    /// <summary>Holds back a replica's 503 (shutting down) or 429 (queue full) while another replica could take the request.</summary>
    sealed class RefusalTransformer(bool canRetry) : HttpTransformer
    {
        public int? Refused { get; private set; }

        public override ValueTask<bool> TransformResponseAsync(HttpContext ctx, HttpResponseMessage? response, CancellationToken cancel)
        {
            if (canRetry && response is { StatusCode: HttpStatusCode.ServiceUnavailable or HttpStatusCode.TooManyRequests })
            {
                Refused = (int)response.StatusCode;
                return ValueTask.FromResult(false);
            }
            return base.TransformResponseAsync(ctx, response, cancel);
        }
    }

    /// <summary>The JSON body's "model", or null when the body is not a JSON object with one.</summary>
    static string? ModelOf(ReadOnlySpan<byte> json)
    {
        if (json.IsEmpty) return null;
        try
        {
            var reader = new Utf8JsonReader(json);
            if (!reader.Read() || reader.TokenType != JsonTokenType.StartObject) return null;
            while (reader.Read() && reader.TokenType == JsonTokenType.PropertyName)
            {
                bool isModel = reader.ValueTextEquals("model");
                reader.Read();
                if (isModel) return reader.TokenType == JsonTokenType.String ? reader.GetString() : null;
                reader.Skip();
            }
        }
        catch (JsonException) { }
        return null; // the replica answers a malformed body with its own 400
    }

    // ---- /v1/models: the union; load/unload: every replica ----

    async Task Models(HttpContext ctx)
    {
        var up = Ring.Replicas.Where(r => r.Healthy).ToList();
        var answers = await Task.WhenAll(up.Select(r => Ask(r, HttpMethod.Get, "v1/models", null, ctx.RequestAborted)));
        var seen = new HashSet<string>();
        var data = new JsonArray();
        foreach (var (_, status, text) in answers.Where(a => a.Status == 200))
            foreach (var m in (JsonNode.Parse(text)?["data"] as JsonArray ?? new JsonArray()).ToList())
                if (m?["id"]?.GetValue<string>() is { } id && seen.Add(id)) data.Add(m.DeepClone());
        if (answers.All(a => a.Status != 200))
        {
            await WriteError(ctx, up.Count == 0 ? 503 : 502, up.Count == 0 ? $"no replica can take the request: all {Ring.Replicas.Count} are down" : "no replica answered /v1/models");
            return;
        }
        await Results.Json(new JsonObject { ["object"] = "list", ["data"] = data }).ExecuteAsync(ctx);
    }

    async Task FanOut(HttpContext ctx)
    {
        using var reader = new StreamReader(ctx.Request.Body);
        var body = await reader.ReadToEndAsync(ctx.RequestAborted);
        var up = Ring.Replicas.Where(r => r.Healthy).ToList();
        if (up.Count == 0) { await WriteError(ctx, 503, $"no replica can take the request: all {Ring.Replicas.Count} are down"); return; }
        var answers = await Task.WhenAll(up.Select(r => Ask(r, HttpMethod.Post, ctx.Request.Path.Value!.TrimStart('/'), body, ctx.RequestAborted)));
        // Every replica must agree; the first refusal (with its replica named) is the answer otherwise.
        var failed = answers.FirstOrDefault(a => a.Status != 200);
        if (failed.Replica is null)
        {
            ctx.Response.ContentType = "text/plain; charset=utf-8";
            await ctx.Response.WriteAsync(answers[0].Text, ctx.RequestAborted);
            return;
        }
        ctx.Response.StatusCode = failed.Status == 0 ? 502 : failed.Status;
        ctx.Response.ContentType = "application/json";
        var error = failed.Status == 0 ? ErrorBody($"replica {failed.Replica} did not answer: {failed.Text}", 502) : TryParse(failed.Text) ?? ErrorBody(failed.Text, failed.Status);
        if (error["error"] is JsonObject e && e["message"] is { } m) e["message"] = $"{m.GetValue<string>()} (replica {failed.Replica})";
        await ctx.Response.WriteAsync(error.ToJsonString(), ctx.RequestAborted);
    }

    static JsonObject? TryParse(string text)
    {
        try { return JsonNode.Parse(text) as JsonObject; } catch (JsonException) { return null; }
    }

    async Task<(Replica Replica, int Status, string Text)> Ask(Replica r, HttpMethod method, string path, string? body, CancellationToken cancel)
    {
        try
        {
            using var request = new HttpRequestMessage(method, new Uri(r.Address, path));
            if (body is not null) request.Content = new StringContent(body, System.Text.Encoding.UTF8, "application/json");
            using var response = await _client.SendAsync(request, cancel);
            return (r, (int)response.StatusCode, await response.Content.ReadAsStringAsync(cancel));
        }
        catch (HttpRequestException e)
        {
            r.Healthy = false;
            return (r, 0, e.Message);
        }
    }

    // ---- health ----

    async Task HealthLoop()
    {
        while (!_stop.IsCancellationRequested)
        {
            try { await Task.Delay(Options.HealthInterval, _stop.Token); }
            catch (OperationCanceledException) { return; }
            await CheckHealthAsync(_stop.Token);
        }
    }

    /// <summary>
    /// Asks every replica's /health once. A refused connection or an error status takes the replica off the ring at once;
    /// a slow answer only when the previous check was slow too (a busy replica is not a dead one). 200 puts it back.
    /// </summary>
    public Task CheckHealthAsync(CancellationToken cancel = default) => Task.WhenAll(Ring.Replicas.Select(async r =>
    {
        try
        {
            using var response = await _health.GetAsync(new Uri(r.Address, "health"), cancel);
            r.Healthy = response.IsSuccessStatusCode;
            r.SlowChecks = 0;
        }
        catch (HttpRequestException) { r.Healthy = false; }
        catch (TaskCanceledException) when (!cancel.IsCancellationRequested)
        {
            if (++r.SlowChecks >= 2) r.Healthy = false;
        }
    }));

    // ---- errors in OpenAI's format ----

    static JsonObject ErrorBody(string message, int status) => new()
    {
        ["error"] = new JsonObject
        {
            ["message"] = message, ["type"] = status == 503 ? "service_unavailable" : "bad_gateway", ["param"] = null, ["code"] = status.ToString(),
        },
    };

    static async Task WriteError(HttpContext ctx, int status, string message)
    {
        ctx.Response.StatusCode = status;
        ctx.Response.ContentType = "application/json";
        await ctx.Response.WriteAsync(ErrorBody(message, status).ToJsonString(), ctx.RequestAborted);
    }

    public Task WaitForShutdownAsync(CancellationToken cancellationToken = default) => _app.WaitForShutdownAsync(cancellationToken);

    public async ValueTask DisposeAsync()
    {
        _stop.Cancel();
        try { await _healthLoop; } catch (OperationCanceledException) { }
        await _app.StopAsync();
        await _app.DisposeAsync();
        _client.Dispose();
        _health.Dispose();
    }
}
