using System.CommandLine;
using System.Globalization;
using PeftSharp.Inference;
using PeftSharp.Tokenization;

namespace PeftSharp.Cli.Commands;

/// <summary>
/// <c>peft chat --model DIR [--adapter NAME=DIR ...]</c>: an interactive conversation, answers streamed as they are
/// decoded. Lines starting with '/' are commands (/help lists them); end with /exit or end of input.
/// </summary>
public static class ChatCommand
{
    const string Help = """
        /system TEXT     set the system message (/system alone clears it)
        /reset           forget the conversation
        /temperature T   sampling temperature (0: greedy)
        /adapter NAME    answer with adapter NAME (base: without adapters); /adapter alone lists them
        /help            this list
        /exit            leave (also end of input)
        """;

    public static Command Create()
    {
        var model = Cli.ModelOption();
        var adapter = Cli.AdapterOption();
        var template = Cli.TemplateOption();
        var system = new Option<string?>("--system") { Description = "System message to start with" };
        var raw = new Option<bool>("--raw") { Description = "Continue each line as a plain prompt: no chat template, no history (base models such as the quickstart's)" };
        var maxNew = new Option<int>("--max-new-tokens") { Description = "Most tokens per answer", DefaultValueFactory = _ => 256 };
        var temperature = new Option<double>("--temperature") { Description = "Sampling temperature (0: greedy)", DefaultValueFactory = _ => 0.7 };
        var topP = new Option<double>("--top-p") { Description = "Nucleus sampling mass", DefaultValueFactory = _ => 1.0 };
        var topK = new Option<int>("--top-k") { Description = "Sample from the k most likely tokens (0: off)", DefaultValueFactory = _ => 50 };
        var seed = new Option<ulong?>("--seed") { Description = "Seed for reproducible sampling" };
        var device = Cli.DeviceOption();
        var dtype = Cli.DTypeOption();
        var cmd = new Command("chat", "Chat with a model (+ adapters) interactively: streamed answers, /system, /reset, /temperature, /adapter")
            { model, adapter, template, system, raw, maxNew, temperature, topP, topK, seed, device, dtype };
        cmd.SetHandler((pr, o) =>
        {
            var dir = pr.GetValue(model)!;
            var tokenizer = HfTokenizer.FromFolder(dir);
            var (m, peft) = Cli.LoadModel(dir, pr.GetValue(adapter), Cli.ParseDevice(pr.GetValue(device)!), Cli.ParseDType(pr.GetValue(dtype)!));
            using var __ = m;
            var generator = new TextGenerator(peft is null ? m : peft, tokenizer, pr.GetValue(template));
            var options = new GenerationOptions
            {
                MaxNewTokens = pr.GetValue(maxNew), TopP = pr.GetValue(topP), TopK = pr.GetValue(topK), Seed = pr.GetValue(seed),
                Decode = ids => tokenizer.Decode(ids, skipSpecialTokens: true),
            }.WithGenerationConfig(dir);
            var session = new ChatSession(generator, WithTemperature(options, pr.GetValue(temperature))) { SystemPrompt = pr.GetValue(system) };
            bool plain = pr.GetValue(raw);
            if (!plain) session.Generator.EncodeChat(Array.Empty<Microsoft.Extensions.AI.ChatMessage>()); // a missing chat template fails here, before the first line
            string active = peft?.ActiveAdapter ?? "base";
            bool interactive = !Console.IsInputRedirected && !Console.IsOutputRedirected;
            var err = pr.InvocationConfiguration.Error;

            void Note(string text) => o.WriteLine(interactive ? $"\x1b[2m{text}\x1b[0m" : $"# {text}");
            Note($"chatting with {dir}" + (peft is null ? "" : $" (adapter {active}; {string.Join(", ", peft.Adapters)} loaded)") + "; /help lists the commands");
            while (true)
            {
                if (interactive) { o.Write("\x1b[1m> \x1b[0m"); o.Flush(); }
                var line = Console.In.ReadLine();
                if (line is null) break;
                line = line.Trim();
                if (line.Length == 0) continue;
                if (line.StartsWith('/'))
                {
                    var (name, arg) = SplitCommand(line);
                    switch (name)
                    {
                        case "exit" or "quit": return 0;
                        case "help": o.WriteLine(Help); break;
                        case "reset": session.Reset(); Note("conversation cleared"); break;
                        case "system":
                            session.SystemPrompt = arg.Length == 0 ? null : arg;
                            Note(arg.Length == 0 ? "system message cleared" : "system message set");
                            break;
                        case "temperature":
                            if (!double.TryParse(arg, NumberStyles.Float, CultureInfo.InvariantCulture, out var t) || t < 0 || !double.IsFinite(t))
                                err.WriteLine($"error: /temperature needs a number >= 0, got '{arg}'");
                            else { session.Options = WithTemperature(session.Options, t); Note(t == 0 ? "greedy decoding" : $"temperature {t}"); }
                            break;
                        case "adapter":
                            var names = new[] { "base" }.Concat(peft?.Adapters ?? Array.Empty<string>()).ToList();
                            if (arg.Length == 0) Note($"adapters: {string.Join(", ", names.Select(n => n == active ? n + " (active)" : n))}");
                            else if (!names.Contains(arg)) err.WriteLine($"error: no adapter '{arg}' (loaded: {string.Join(", ", names)})");
                            else
                            {
                                active = arg;
                                if (arg != "base") peft!.SetAdapter(arg);
                                Note($"answering with {(arg == "base" ? "the base model" : "adapter " + arg)}");
                            }
                            break;
                        default: err.WriteLine($"error: unknown command /{name} (/help lists them)"); break;
                    }
                    continue;
                }
                try
                {
                    int dropped = session.DroppedExchanges;
                    using (active == "base" && peft is not null ? peft.DisableAdapters() : null)
                        foreach (var piece in (plain ? generator.GenerateStreamingAsync(line, session.Options) : session.SendStreamingAsync(line)).ToBlockingEnumerable())
                        {
                            o.Write(piece);
                            o.Flush();
                        }
                    o.WriteLine();
                    if (session.DroppedExchanges > dropped) Note($"dropped the oldest {session.DroppedExchanges - dropped} exchange(s) to fit the context window");
                }
                catch (PeftSharpException e) { err.WriteLine($"error: {e.Message}"); }
            }
            return 0;
        });
        return cmd;
    }

    static GenerationOptions WithTemperature(GenerationOptions o, double t) =>
        t == 0 ? o with { DoSample = false, Temperature = 1.0 } : o with { DoSample = true, Temperature = t };

    static (string Name, string Arg) SplitCommand(string line)
    {
        int space = line.IndexOf(' ');
        return space < 0 ? (line[1..].ToLowerInvariant(), "") : (line[1..space].ToLowerInvariant(), line[(space + 1)..].Trim());
    }
}
