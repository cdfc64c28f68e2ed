using System.CommandLine;
using PeftSharp.Server.Routing;

namespace PeftSharp.Cli.Commands;

/// <summary><c>peft route --backend URL [--backend URL ...] [--port P] [--host H]</c>: one OpenAI endpoint over several `peft serve` replicas.</summary>
public static class RouteCommand
{
    public static Command Create()
    {
        var backends = new Option<string[]>("--backend") { Description = "URL of a `peft serve` replica (repeatable); replicas should share --adapter-root", AllowMultipleArgumentsPerToken = true, Required = true };
        var port = new Option<int>("--port") { Description = "TCP port (0: any free port)", DefaultValueFactory = _ => 8080 };
        var host = new Option<string>("--host") { Description = "Address to bind (loopback by default)", DefaultValueFactory = _ => "127.0.0.1" };
        var interval = new Option<double>("--health-interval") { Description = "Seconds between health checks of each replica", DefaultValueFactory = _ => 2 };
        var load = new Option<double>("--load-factor") { Description = "A replica takes at most this × the mean load before an adapter spills to the next", DefaultValueFactory = _ => 1.25 };
        var cmd = new Command("route", "Route the OpenAI API to several `peft serve` replicas, keeping each adapter on one replica (consistent hashing, bounded load)")
        {
            backends, port, host, interval, load,
        };
        cmd.SetHandler((pr, o) =>
        {
            var urls = pr.GetValue(backends)!.Select(b =>
                Uri.TryCreate(b.EndsWith('/') ? b : b + "/", UriKind.Absolute, out var u) && u.Scheme is "http" or "https" ? u
                : throw new ArgumentException($"--backend '{b}' is not an http(s) URL")).ToList();
            if (pr.GetValue(interval) is not (> 0 and <= 3600) and var s) throw new ArgumentException($"--health-interval {s}: expected seconds in (0, 3600]");
            if (pr.GetValue(load) < 1) throw new ArgumentException($"--load-factor {pr.GetValue(load)}: expected >= 1");
            var options = new RouterOptions { HealthInterval = TimeSpan.FromSeconds(pr.GetValue(interval)), LoadFactor = pr.GetValue(load) };
            var router = AdapterRouter.StartAsync(urls, pr.GetValue(host)!, pr.GetValue(port), options).GetAwaiter().GetResult();
            int up = router.Ring.Replicas.Count(r => r.Healthy);
            o.WriteLine($"routing {router.Address} to {urls.Count} replica(s), {up} healthy now: {string.Join(", ", urls)} (Ctrl-C to stop)");
            o.Flush();
            router.WaitForShutdownAsync().GetAwaiter().GetResult();
            router.DisposeAsync().AsTask().GetAwaiter().GetResult();
            return 0;
        });
        return cmd;
    }
}
