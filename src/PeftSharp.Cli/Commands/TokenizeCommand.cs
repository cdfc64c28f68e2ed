using System.CommandLine;
using System.Text;
using PeftSharp.Tokenization;

namespace PeftSharp.Cli.Commands;

/// <summary>
/// <c>peft tokenize --model DIR (--text TEXT | --file PATH | &lt; stdin) [--special] [--tokens]</c>: text to ids with the
/// folder's tokenizer. Files and stdin are read whole as UTF-8, NUL bytes included.
/// </summary>
public static class TokenizeCommand
{
    public static Command Create()
    {
        var model = Cli.ModelOption();
        var text = new Option<string?>("--text") { Description = "Text to encode" };
        var file = new Option<string?>("--file") { Description = "Encode this UTF-8 file ('-': stdin); without --text or --file, redirected stdin is read" };
        var special = new Option<bool>("--special") { Description = "Add the special tokens the tokenizer's post-processor adds (BOS/EOS, [CLS]/[SEP])" };
        var tokens = new Option<bool>("--tokens") { Description = "Also print the token strings" };
        var cmd = new Command("tokenize", "Encode text (--text, --file or stdin) into token ids with a model folder's tokenizer") { model, text, file, special, tokens };
        cmd.SetHandler((pr, o) =>
        {
            var input = ReadInput(pr.GetValue(text), pr.GetValue(file));
            var tok = HfTokenizer.FromFolder(Cli.ModelDir(pr, model));
            var ids = tok.Encode(input, addSpecialTokens: pr.GetValue(special));
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

    static string ReadInput(string? text, string? file)
    {
        if (text is not null && file is not null) throw new ArgumentException("give one of --text and --file");
        if (text is not null) return text;
        if (file is null && !Console.IsInputRedirected)
            throw new ArgumentException("give --text, --file PATH, or pipe the text on stdin");
        if (file is null or "-")
        {
            using var stdin = new StreamReader(Console.OpenStandardInput(), new UTF8Encoding(false));
            return stdin.ReadToEnd();
        }
        if (!File.Exists(file)) throw new ArgumentException($"--file {file}: no such file");
        return File.ReadAllText(file, new UTF8Encoding(false));
    }
}
