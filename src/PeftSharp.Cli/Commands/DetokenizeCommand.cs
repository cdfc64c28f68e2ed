using System.CommandLine;
using PeftSharp.Tokenization;

namespace PeftSharp.Cli.Commands;

/// <summary><c>peft detokenize --model DIR --ids "1 2 3" [--skip-special]</c>: ids back to text.</summary>
public static class DetokenizeCommand
{
    public static Command Create()
    {
        var model = Cli.ModelOption();
        var ids = new Option<string>("--ids") { Description = "Token ids separated by spaces or commas", Required = true };
        var skip = new Option<bool>("--skip-special") { Description = "Leave special tokens out of the text" };
        var cmd = new Command("detokenize", "Decode token ids into text with a model folder's tokenizer") { model, ids, skip };
        cmd.SetHandler((pr, o) =>
        {
            var tok = HfTokenizer.FromFolder(Cli.ModelDir(pr, model));
            var rows = Cli.ParseIdRows(pr.GetValue(ids)!, "--ids");
            if (rows.Length != 1) throw new ArgumentException("--ids takes one row (no ';')");
            var list = rows[0].Select(v => v is >= 0 and <= int.MaxValue ? (int)v : throw new ArgumentException($"--ids: {v} is not a token id")).ToList();
            var text = tok.Decode(list, skipSpecialTokens: pr.GetValue(skip));
            if (pr.GetValue(Cli.JsonOption)) Cli.WriteJson(o, new { Text = text });
            else o.WriteLine(text);
            return 0;
        });
        return cmd;
    }
}
