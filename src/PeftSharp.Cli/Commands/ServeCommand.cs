using System.CommandLine;
using PeftSharp.Inference.Serving;
using PeftSharp.Server;

namespace PeftSharp.Cli.Commands;

/// <summary><c>peft serve --model DIR [--adapter NAME=DIR ...] [--compose NAME=COMPOSITION ...] [--fusion DIR ...] [--adapter-root DIR] [--max-loras N] [--port P] [--host H]</c>: an OpenAI-compatible server.</summary>
public static class ServeCommand
{
    public static Command Create()
    {
        var model = Cli.ModelOption();
        var adapters = new Option<string[]>("--adapter") { Description = "NAME=DIR: an adapter served under NAME (repeatable)", AllowMultipleArgumentsPerToken = true };
        var root = new Option<string?>("--adapter-root") { Description = "Folder /v1/load_lora_adapter may load from (off without it)" };
        var maxLoras = new Option<int>("--max-loras") { Description = "Adapters resident at once (LRU beyond)", DefaultValueFactory = _ => 8 };
        var maxBatch = new Option<int>("--max-batch") { Description = "Sequences decoded together", DefaultValueFactory = _ => 32 };
        var maxQueue = new Option<int>("--max-queue") { Description = "Requests waiting for a slot before 429", DefaultValueFactory = _ => 256 };
        var maxTokens = new Option<int>("--max-tokens-limit") { Description = "Largest max_tokens a request may ask for", DefaultValueFactory = _ => 4096 };
        var maxPromptBytes = new Option<int>("--max-prompt-bytes") { Description = "Largest prompt in UTF-8 bytes, refused before tokenizing", DefaultValueFactory = _ => 1 << 20 };
        var port = new Option<int>("--port") { Description = "TCP port (0: any free port)", DefaultValueFactory = _ => 8000 };
        var host = new Option<string>("--host") { Description = "Address to bind (loopback by default)", DefaultValueFactory = _ => "127.0.0.1" };
        var name = new Option<string?>("--served-model-name") { Description = "The base model's name in requests (default: the folder name)" };
        var compose = new Option<string[]>("--compose")
        {
            Description = "NAME=COMPOSITION: serve an AdapterHub composition of loaded adapters under NAME, e.g. fused=\"Fuse[a,b]\" (repeatable)",
            AllowMultipleArgumentsPerToken = true,
        };
        var fusion = CompositionOptions.FusionOption();
        var template = Cli.TemplateOption();
        var device = Cli.DeviceOption();
        var dtype = Cli.DTypeOption();
        var cmd = new Command("serve", "Serve a base model and many LoRA adapters over an OpenAI-compatible HTTP API (continuous batching)")
        {
            model, adapters, root, maxLoras, maxBatch, maxQueue, maxTokens, maxPromptBytes, port, host, name, compose, fusion, template, device, dtype,
        };
        cmd.SetHandler((pr, o) =>
        {
            var dir = pr.GetValue(model)!; // resolved by the engine, which serves a repo id under its own name
            var pairs = (pr.GetValue(adapters) ?? Array.Empty<string>()).Select(a =>
            {
                int eq = a.IndexOf('=');
                if (eq <= 0 || eq == a.Length - 1) throw new ArgumentException($"--adapter '{a}' must be NAME=DIR");
                return (a[..eq], a[(eq + 1)..]);
            }).ToList();
            var compositions = (pr.GetValue(compose) ?? Array.Empty<string>()).Select(c =>
            {
                int eq = c.IndexOf('=');
                if (eq <= 0 || eq == c.Length - 1) throw new ArgumentException($"--compose '{c}' must be NAME=COMPOSITION, e.g. fused=\"Fuse[a,b]\"");
                return (c[..eq], c[(eq + 1)..]);
            }).ToList();
            var options = new ServingOptions
            {
                Compositions = compositions, FusionDirs = pr.GetValue(fusion) ?? Array.Empty<string>(),
                MaxLoras = pr.GetValue(maxLoras), MaxBatchSize = pr.GetValue(maxBatch), MaxQueue = pr.GetValue(maxQueue),
                MaxTokensLimit = pr.GetValue(maxTokens), MaxPromptBytes = pr.GetValue(maxPromptBytes), AdapterRoot = pr.GetValue(root),
                ModelName = pr.GetValue(name), ChatTemplate = pr.GetValue(template),
            };
            if (options.AdapterRoot is { } r && !Directory.Exists(r)) throw new ArgumentException($"--adapter-root '{r}' is not a folder");
            using var engine = ServingEngine.FromFolder(dir, options, pairs, Cli.ParseDevice(pr.GetValue(device)!), Cli.ParseDType(pr.GetValue(dtype)!));
            // One access-log line per request on the command's output.
            var server = OpenAiServer.StartAsync(engine, pr.GetValue(host)!, pr.GetValue(port), accessLog: line => { lock (o) { o.WriteLine(line); o.Flush(); } }).GetAwaiter().GetResult();
            o.WriteLine($"serving {engine.ModelName} and {pairs.Count} adapter(s){(compositions.Count > 0 ? $" and {compositions.Count} composition(s)" : "")} on {server.Address} (Ctrl-C to stop)");
            o.Flush();
            server.WaitForShutdownAsync().GetAwaiter().GetResult();
            server.DisposeAsync().AsTask().GetAwaiter().GetResult();
            return 0;
        });
        return cmd;
    }
}
