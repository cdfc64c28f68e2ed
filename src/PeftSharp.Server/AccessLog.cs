using System.Diagnostics;
using System.Globalization;
using Microsoft.AspNetCore.Http;

namespace PeftSharp.Server;

/// <summary>
/// One line per request, written when its response ends: time, client, method, path, status, duration, and for
/// generation and embedding requests the model and token counts
/// (<c>2026-12-07T16:30:00Z 127.0.0.1 POST /v1/completions 200 41.3ms model=a prompt_tokens=5 completion_tokens=6</c>).
/// </summary>
internal static class AccessLog
{
    public const string ModelKey = "peft.model", UsageKey = "peft.usage";

    public static async Task Middleware(HttpContext ctx, RequestDelegate next, Action<string> write)
    {
        var clock = Stopwatch.StartNew();
        try { await next(ctx); }
        finally
        {
            var line = string.Create(CultureInfo.InvariantCulture,
                $"{DateTime.UtcNow:yyyy-MM-ddTHH:mm:ssZ} {ctx.Connection.RemoteIpAddress} {ctx.Request.Method} {ctx.Request.Path} {ctx.Response.StatusCode} {clock.Elapsed.TotalMilliseconds:F1}ms");
            if (ctx.Items[ModelKey] is string model) line += $" model={model}";
            if (ctx.Items[UsageKey] is (int prompt, int completion)) line += $" prompt_tokens={prompt} completion_tokens={completion}";
            if (ctx.RequestAborted.IsCancellationRequested) line += " client_gone";
            write(line);
        }
    }
}
