using System.CommandLine;
using System.Text.Json;
using System.Text.Json.Nodes;
using PeftSharp.Tokenization.ChatTemplates;

namespace PeftSharp.Cli.Commands;

/// <summary><c>peft chat-template --model DIR --messages FILE.json [--add-generation-prompt] [--extra JSON] [--template NAME]</c>.</summary>
public static class ChatTemplateCommand
{
    public static Command Create()
    {
        var model = Cli.ModelOption();
        var messages = new Option<string>("--messages") { Description = "JSON file with a list of {role, content} messages", Required = true };
        var addGen = new Option<bool>("--add-generation-prompt") { Description = "End with the assistant's turn header" };
        var extra = new Option<string?>("--extra") { Description = "JSON object of extra template variables, e.g. '{\"enable_thinking\": false}'" };
        var template = Cli.TemplateOption();
        var cmd = new Command("chat-template", "Render a conversation with a model folder's chat template") { model, messages, addGen, extra, template };
        cmd.SetHandler((pr, o) =>
        {
            var path = pr.GetValue(messages)!;
            if (!File.Exists(path)) throw new PeftFormatException(path, "messages file not found");
            JsonArray list;
            try { list = JsonNode.Parse(File.ReadAllText(path)) as JsonArray ?? throw new PeftFormatException(path, "expected a JSON list of messages"); }
            catch (JsonException e) { throw new PeftFormatException(path, $"not valid JSON: {e.Message}"); }
            var text = ChatPrompt.Render(Cli.ModelDir(pr, model), list, pr.GetValue(addGen), Cli.ParseJsonObject(pr.GetValue(extra), "--extra"), pr.GetValue(template));
            if (pr.GetValue(Cli.JsonOption)) Cli.WriteJson(o, new { Text = text });
            else o.Write(text);
            return 0;
        });
        return cmd;
    }
}
