using System.CommandLine;
using PeftSharp.Models;
using PeftSharp.Tokenization;
using PeftSharp.Training;
using PeftSharp.Training.Data;

namespace PeftSharp.Cli.Commands;

/// <summary><c>peft eval --model DIR [--adapter DIR] --dataset FILE</c>: loss and perplexity (accuracy for classifiers).</summary>
public static class EvalCommand
{
    public static Command Create()
    {
        var model = Cli.ModelOption();
        var adapter = new Option<string?>("--adapter") { Description = "Adapter folder to apply (HF PEFT format)" };
        var dataset = new Option<string>("--dataset") { Description = "JSON/JSONL dataset", Required = true };
        var format = new Option<string?>("--dataset-format") { Description = "alpaca, sharegpt, tokenized, classification or text (default: detected)" };
        var template = new Option<string?>("--template") { Description = "Prompt template (default: the model's chat template, else empty)" };
        var cutoff = new Option<int>("--cutoff-len") { Description = "Truncate rows to this many tokens", DefaultValueFactory = _ => 2048 };
        var batch = new Option<int>("--batch-size") { Description = "Rows per forward", DefaultValueFactory = _ => 8 };
        var device = Cli.DeviceOption();
        var cmd = new Command("eval", "Evaluate a model (+ adapter) on a dataset: loss, perplexity, accuracy") { model, adapter, dataset, format, template, cutoff, batch, device };
        cmd.SetHandler((pr, o) =>
        {
            var dir = Cli.ModelDir(pr, model);
            using var m = AutoModel.FromPretrained(dir, Cli.ParseDevice(pr.GetValue(device)!));
            var tokenizer = File.Exists(Path.Combine(dir, HfTokenizer.TokenizerFile)) ? HfTokenizer.FromFolder(dir) : null;
            var options = new DataOptions
            {
                Format = pr.GetValue(format) is { } f ? DatasetFormats.Parse(f) : null,
                Template = PromptTemplate.Resolve(pr.GetValue(template), dir, tokenizer),
                CutoffLen = pr.GetValue(cutoff),
                LabelMap = TrainSetup.LabelMap(m),
                VocabSize = m.Config.VocabSize,
            };
            var (rows, _) = DatasetBuilder.Load(pr.GetValue(dataset)!, tokenizer, options);
            var target = AdapterTargets.ForEval(m, pr.GetValue(adapter), tokenizer);
            var r = Evaluation.Run(target, rows, pr.GetValue(batch));
            if (pr.GetValue(Cli.JsonOption)) Cli.WriteJson(o, r);
            else o.WriteLine($"{r.Rows} rows: loss {r.Loss:F4}, perplexity {r.Perplexity:F3}" + (r.Accuracy is { } a ? $", accuracy {a:P2}" : ""));
            return 0;
        });
        return cmd;
    }
}
