using System.CommandLine;
using PeftSharp.Tokenization;

namespace PeftSharp.Cli.Commands;

/// <summary><c>peft tokenize --model DIR --text TEXT [--special] [--tokens]</c>: text to ids with the folder's tokenizer.</summary>
public static class TokenizeCommand
{
    public static Command Create()
    {
        var model = Cli.ModelOption();
        var text = new Option<string>("--text") { Description = "Text to encode", Required = true };
        var special = new Option<bool>("--special") { Description = "Add the special tokens the tokenizer's post-processor adds (BOS/EOS, [CLS]/[SEP])" };
        var tokens = new Option<bool>("--tokens") { Description = "Also print the token strings" };
        var cmd = new Command("tokenize", "Encode text into token ids with a model folder's tokenizer") { model, text, special, tokens };
        cmd.SetHandler((pr, o) =>
        {
            var tok = HfTokenizer.FromFolder(Cli.ModelDir(pr, model));
            var ids = tok.Encode(pr.GetValue(text)!, addSpecialTokens: pr.GetValue(special));
            var pieces = pr.GetValue(tokens) ? tok.ConvertIdsToTokens(ids) : null;
            if (pr.GetValue(Cli.JsonOption)) Cli.WriteJson(o, new { Ids = ids, Tokens = pieces });
            else
            {
                o.WriteLine(string.Join(' ', ids));
                if (pieces is not null) o.WriteLine(string.Join(" ", pieces.Select(p => System.Text.Json.JsonSerializer.Serialize(p, Cli.Json))));
            }
            return 0;
        });
        return cmd;
    }
}
