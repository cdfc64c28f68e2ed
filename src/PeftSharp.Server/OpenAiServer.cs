using System.Net;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Server.Kestrel.Core;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using PeftSharp.Inference.Serving;

namespace PeftSharp.Server;

/// <summary>
/// OpenAI-compatible HTTP front end (vLLM's dialect) over a <see cref="ServingEngine"/>: /v1/completions,
/// /v1/chat/completions (both with server-sent-event streaming), /v1/embeddings, /v1/models[/{id}], /v1/load_lora_adapter,
/// /v1/unload_lora_adapter, /health and /metrics. Binds to loopback unless told otherwise.
/// </summary>
public sealed class OpenAiServer : IAsyncDisposable
{
    const string AccessCategory = "PeftSharp.Server.Access";
    readonly WebApplication _app;
    readonly ServingEngine _engine;
    readonly TimeSpan _drain;

    OpenAiServer(WebApplication app, ServingEngine engine, TimeSpan drain)
    {
        _app = app;
        _engine = engine;
        _drain = drain;
    }

    /// <summary>The address it listens on (with the real port when 0 was asked for).</summary>
    public Uri Address { get; private set; } = null!;

    /// <summary>Builds and starts the server. <paramref name="port"/> 0 picks a free port.</summary>
    /// <param name="accessLog">Receives one line per request (null: the host's logger, category PeftSharp.Server.Access, at Information).</param>
    public static async Task<OpenAiServer> StartAsync(ServingEngine engine, string host = "127.0.0.1", int port = 8000, TimeSpan? drain = null, CancellationToken cancellationToken = default, Action<string>? accessLog = null)
    {
        var builder = WebApplication.CreateSlimBuilder();
        builder.Logging.SetMinimumLevel(LogLevel.Warning);
        builder.Logging.AddFilter(AccessCategory, LogLevel.Information);
        var shutdown = drain ?? TimeSpan.FromSeconds(30);
        builder.Services.Configure<HostOptions>(o => o.ShutdownTimeout = shutdown + TimeSpan.FromSeconds(5));
        builder.WebHost.ConfigureKestrel(k =>
        {
            // Room for a prompt of MaxPromptBytes with JSON escapes; bigger bodies get 413 before they are read.
            k.Limits.MaxRequestBodySize = 2L * engine.Options.MaxPromptBytes + (1L << 20);
            var address = host is "localhost" ? IPAddress.Loopback : IPAddress.Parse(host);
            k.Listen(address, port);
        });
        var app = builder.Build();
        var server = new OpenAiServer(app, engine, shutdown);
        var api = new OpenAiApi(engine);
        var logger = app.Services.GetRequiredService<ILoggerFactory>().CreateLogger(AccessCategory);
        var write = accessLog ?? (line => logger.LogInformation("{Line}", line));
        app.Use((ctx, next) => AccessLog.Middleware(ctx, next, write));
        // Unknown routes (404), wrong methods (405) and Kestrel's refusals get OpenAI's error body too.
        app.UseStatusCodePages(context => OpenAiApi.StatusBody(context.HttpContext));
        app.MapPost("/v1/completions", api.Completions);
        app.MapPost("/v1/chat/completions", api.ChatCompletions);
        app.MapGet("/v1/models", api.Models);
        app.MapGet("/v1/models/{**id}", (HttpContext ctx, string id) => api.Model(ctx, id));
        app.MapPost("/v1/embeddings", api.Embeddings);
        app.MapPost("/v1/load_lora_adapter", api.LoadAdapter);
        app.MapPost("/v1/unload_lora_adapter", api.UnloadAdapter);
        app.MapGet("/health", () => Results.Ok());
        app.MapGet("/metrics", api.Metrics);
        // Finish or cancel in-flight requests before Kestrel's own drain ends.
        app.Lifetime.ApplicationStopping.Register(() => _ = engine.StopAsync(shutdown));
        await app.StartAsync(cancellationToken);
        var bound = app.Urls.First();
        server.Address = new Uri(bound.Replace("0.0.0.0", "127.0.0.1").Replace("[::]", "[::1]"));
        return server;
    }

    /// <summary>Blocks until the host shuts down (Ctrl-C / SIGTERM).</summary>
    public Task WaitForShutdownAsync(CancellationToken cancellationToken = default) => _app.WaitForShutdownAsync(cancellationToken);

    /// <summary>Graceful stop: no new requests, running ones finish (or are cancelled after the drain time).</summary>
    public async Task StopAsync()
    {
        var engineStop = _engine.StopAsync(_drain);
        await _app.StopAsync();
        await engineStop;
    }

    public async ValueTask DisposeAsync()
    {
        await StopAsync();
        await _app.DisposeAsync();
    }
}
