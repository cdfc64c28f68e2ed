using System.CommandLine;
using PeftSharp.Inference;
using PeftSharp.Models;
using PeftSharp.Tokenization;
using PeftSharp.Tokenization.ChatTemplates;

namespace PeftSharp.Cli.Commands;

/// <summary><c>peft generate --model DIR (--prompt TEXT | --input-ids "1 2 3[;4 5 6]") [sampling options]</c>.</summary>
public static class GenerateCommand
{
    public static Command Create()
    {
        var model = Cli.ModelOption();
        var prompt = new Option<string?>("--prompt") { Description = "Text prompt (needs the model's tokenizer)" };
        var chat = new Option<bool>("--chat") { Description = "Send --prompt as a user message through the chat template" };
        var system = new Option<string?>("--system") { Description = "System message for --chat" };
        var extra = new Option<string?>("--extra") { Description = "JSON object of extra chat-template variables" };
        var template = Cli.TemplateOption();
        var inputIds = new Option<string?>("--input-ids") { Description = "Prompt token ids: \"1 2 3\", rows separated by ';' (shorter rows are left-padded)" };
        var maxNew = new Option<int>("--max-new-tokens") { Description = "Tokens to generate per row", DefaultValueFactory = _ => 20 };
        var doSample = new Option<bool>("--do-sample") { Description = "Sample instead of greedy decoding" };
        var temperature = new Option<double>("--temperature") { Description = "Sampling temperature", DefaultValueFactory = _ => 1.0 };
        var topK = new Option<int>("--top-k") { Description = "Sample from the k most likely tokens (0: off)", DefaultValueFactory = _ => 50 };
        var topP = new Option<double>("--top-p") { Description = "Nucleus sampling mass", DefaultValueFactory = _ => 1.0 };
        var repetition = new Option<double>("--repetition-penalty") { Description = "Penalty on tokens already in the row (1: off)", DefaultValueFactory = _ => 1.0 };
        var seed = new Option<ulong?>("--seed") { Description = "Seed for reproducible sampling" };
        var stop = new Option<string[]>("--stop") { Description = "Stop strings (need the tokenizer)", AllowMultipleArgumentsPerToken = true };
        var eosIds = new Option<int[]>("--eos-id") { Description = "Token ids that end a row (default: generation_config.json, else config.json)", AllowMultipleArgumentsPerToken = true };
        var padId = new Option<int?>("--pad-id") { Description = "Pad id for left padding and finished rows (default: the model's)" };
        var adapter = Cli.AdapterOption();
        var compose = CompositionOptions.ComposeOption();
        var fusion = CompositionOptions.FusionOption();
        var device = Cli.DeviceOption();
        var dtype = Cli.DTypeOption();
        var cmd = new Command("generate", "Generate tokens with a causal LM (greedy or sampled, KV-cached)")
        {
            model, prompt, chat, system, extra, template, inputIds, maxNew, doSample, temperature, topK, topP, repetition, seed, stop, eosIds, padId, adapter, compose, fusion, device, dtype,
        };
        cmd.SetHandler((pr, o) =>
        {
            var dir = Cli.ModelDir(pr, model);
            var text = pr.GetValue(prompt);
            var ids = pr.GetValue(inputIds);
            if ((text is null) == (ids is null)) throw new ArgumentException("give exactly one of --prompt and --input-ids");
            var stops = pr.GetValue(stop) ?? Array.Empty<string>();
            var tokenizer = File.Exists(Path.Combine(dir, "tokenizer.json")) ? HfTokenizer.FromFolder(dir) : null;
            if (tokenizer is null && (text is not null || stops.Length > 0))
                throw new PeftFormatException(Path.Combine(dir, "tokenizer.json"),
                    $"{(text is not null ? "--prompt" : "--stop")} needs the model's tokenizer.json, which is missing; give token ids with --input-ids");
            if (pr.GetValue(chat) && text is null) throw new ArgumentException("--chat needs --prompt");
            var rows = text is not null
                ? new[] { (pr.GetValue(chat)
                    ? ChatPrompt.Encode(tokenizer!, Conversation(pr.GetValue(system), text), true, Cli.ParseJsonObject(pr.GetValue(extra), "--extra"), pr.GetValue(template))
                    : tokenizer!.Encode(text)).ToArray() }
                : Cli.ParseIdRows(ids!, "--input-ids")
                    .Select(r => r.Select(v => v is >= 0 and <= int.MaxValue ? (int)v : throw new ArgumentException($"--input-ids: {v} is not a token id")).ToArray()).ToArray();
            var eos = pr.GetValue(eosIds);

            var options = new GenerationOptions
            {
                MaxNewTokens = pr.GetValue(maxNew),
                DoSample = pr.GetValue(doSample),
                Temperature = pr.GetValue(temperature),
                TopK = pr.GetValue(topK),
                TopP = pr.GetValue(topP),
                RepetitionPenalty = pr.GetValue(repetition),
                Seed = pr.GetValue(seed),
                EosTokenIds = eos is { Length: > 0 } ? eos : null,
                PadTokenId = pr.GetValue(padId),
                StopStrings = stops,
                Decode = tokenizer is null ? null : t => tokenizer.Decode(t, skipSpecialTokens: true),
            }.WithGenerationConfig(dir);
            options.Validate();

            var (m, peft) = Cli.LoadModel(dir, pr.GetValue(adapter), Cli.ParseDevice(pr.GetValue(device)!), Cli.ParseDType(pr.GetValue(dtype)!));
            using var __ = m;
            Tuners.AdapterComposition.Apply(peft, pr.GetValue(compose), pr.GetValue(fusion));
            bool json = pr.GetValue(Cli.JsonOption);
            Action<GeneratedToken>? stream = json ? null
                : rows.Length == 1 && tokenizer is not null ? t => { o.Write(t.TextDelta); o.Flush(); }
                : rows.Length == 1 ? t => { o.Write($"{t.TokenId} "); o.Flush(); }
                : t => { o.WriteLine($"row {t.Row}: {t.TokenId}"); o.Flush(); };
            // Through the PeftModel, so prompt-family adapters (inputs, KV prefix) apply at every step.
            var result = new TextGenerator(peft is null ? m : peft).Generate(rows, options, stream);

            if (json)
            {
                Cli.WriteJson(o, new
                {
                    Rows = Enumerable.Range(0, rows.Length).Select(r => new
                    {
                        PromptIds = result.PromptIds[r],
                        NewIds = result.NewTokens[r],
                        Text = result.Texts?[r],
                        FinishReason = ReasonName(result.FinishReasons[r]),
                    }),
                });
                return 0;
            }
            if (rows.Length == 1) o.WriteLine();
            for (int r = 0; r < rows.Length; r++)
                o.WriteLine($"row {r} ({ReasonName(result.FinishReasons[r])}): {string.Join(' ', result.PromptIds[r])} | {string.Join(' ', result.NewTokens[r])}");
            return 0;
        });
        return cmd;
    }

    static System.Text.Json.Nodes.JsonArray Conversation(string? system, string user)
    {
        var list = new System.Text.Json.Nodes.JsonArray();
        if (system is not null) list.Add(new System.Text.Json.Nodes.JsonObject { ["role"] = "system", ["content"] = system });
        list.Add(new System.Text.Json.Nodes.JsonObject { ["role"] = "user", ["content"] = user });
        return list;
    }

    static string ReasonName(FinishReason r) => r switch
    {
        FinishReason.Eos => "eos",
        FinishReason.StopString => "stop_string",
        _ => "length",
    };
}
