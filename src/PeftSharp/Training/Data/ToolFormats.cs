using System.Globalization;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using PeftSharp.Tokenization.ChatTemplates.Jinja;

namespace PeftSharp.Training.Data;

/// <summary>
/// LLaMA-Factory's tool formats (tool_utils.py): how a template writes the tool list into the system prompt and an
/// assistant's function calls into its turn. Texts follow LLaMA-Factory's prompts; JSON is written as Python's
/// json.dumps(ensure_ascii=False) writes it.
/// </summary>
public static class ToolFormats
{
    public static readonly IReadOnlyList<string> Names = ["default", "qwen", "llama3", "mistral"];

    static string Dumps(object? v, string? indent = null) => PyJson.Dumps(v, false, indent, null, null, false);

    static object? Parse(string json, string what)
    {
        try { return Py.FromJson(JsonNode.Parse(json)); }
        catch (JsonException e) { throw new PeftFormatException(what, $"not valid JSON ({e.Message}): {json}"); }
    }

    static PyDict AsDict(object? v, string what) => v as PyDict ?? throw new PeftFormatException(what, "expected a JSON object for each tool");

    // A tool given bare ({name, description, parameters}) is wrapped as {"type": "function", "function": tool}.
    static PyDict Wrapped(PyDict tool) => tool.TryGetValue("type", out var t) && t as string == "function"
        ? tool : new PyDict { ["type"] = "function", ["function"] = tool };

    /// <summary>The tool-list text appended to the system prompt for a JSON list of tools.</summary>
    public static string FormatTools(string format, string toolsJson)
    {
        var tools = Parse(toolsJson, "tools") as List<object?> ?? throw new PeftFormatException("tools", "expected a JSON list of tools");
        if (tools.Count == 0) return "";
        var dicts = tools.Select(t => AsDict(t, "tools")).ToList();
        switch (format)
        {
            case "qwen":
                return "\n\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\n" +
                    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>" +
                    string.Concat(dicts.Select(t => "\n" + Dumps(Wrapped(t)))) +
                    "\n</tools>\n\nFor each function call, return a json object with function name and arguments within " +
                    "<tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call>";
            case "llama3":
                return "Cutting Knowledge Date: December 2023\nToday Date: " + DateTime.Now.ToString("dd MMM yyyy", CultureInfo.InvariantCulture) + "\n\n" +
                    "You have access to the following functions. To call a function, please respond with JSON for a function call. " +
                    "Respond in the format {\"name\": function name, \"parameters\": dictionary of argument name and its value}. " +
                    "Do not use variables.\n\n" + string.Concat(dicts.Select(t => Dumps(Wrapped(t), "    ") + "\n\n"));
            case "mistral":
                return "[AVAILABLE_TOOLS] " + Dumps(dicts.Select(t => (object?)Wrapped(t)).ToList()) + "[/AVAILABLE_TOOLS]";
            default:
            {
                var text = new StringBuilder();
                var names = new List<string>();
                foreach (var raw in dicts)
                {
                    var tool = raw.TryGetValue("type", out var t) && t as string == "function" ? AsDict(raw["function"], "tools") : raw;
                    var name = tool.TryGetValue("name", out var n) ? Py.Str(n) : throw new PeftFormatException("tools", "a tool has no name");
                    var parameters = tool.TryGetValue("parameters", out var p) ? AsDict(p, "tools") : new PyDict();
                    var required = parameters.TryGetValue("required", out var r) && r is List<object?> req ? req.Select(Py.Str).ToList() : [];
                    var args = new StringBuilder();
                    if (parameters.TryGetValue("properties", out var props) && props is PyDict properties)
                        foreach (var (key, value) in properties)
                        {
                            var param = AsDict(value, "tools");
                            string Get(string k) => param.TryGetValue(k, out var v) && v is not null ? Py.Str(v) : "";
                            var enumText = param.TryGetValue("enum", out var e) && e is List<object?> { Count: > 0 } en ? $", should be one of [{string.Join(", ", en.Select(Py.Str))}]" : "";
                            var items = param.TryGetValue("items", out var it) && it is PyDict { Count: > 0 } itd ? $", where each item should be {(itd.TryGetValue("type", out var ty) ? Py.Str(ty) : "")}" : "";
                            args.Append($"  - {Py.Str(key)} ({Get("type")}{(required.Contains(Py.Str(key)) ? ", required" : "")}): {Get("description")}{enumText}{items}\n");
                        }
                    text.Append($"> Tool Name: {name}\nTool Description: {(tool.TryGetValue("description", out var d) ? Py.Str(d) : "")}\nTool Args:\n{args}\n");
                    names.Add(name);
                }
                return "You have access to the following tools:\n" + text + "Use the following format if using a tool:\n```\n" +
                    $"Action: tool name (one of [{string.Join(", ", names)}])\n" +
                    "Action Input: the input to the tool, in a JSON format representing the kwargs (e.g. ```{\"input\": \"hello world\", \"num_beams\": 5}```)\n```\n";
            }
        }
    }

    /// <summary>An assistant's function-call turn (JSON {name, arguments} or a list of them) in the format's text.</summary>
    public static string FormatFunction(string format, string content, (string Open, string Close)? thoughtWords, (string Open, string Close)? toolCallWords)
    {
        string prefix = "", json = content;
        if (toolCallWords is { } tc && Find(content, tc.Open, tc.Close) is { } call)
        {
            prefix = content.Remove(call.Start, call.Length);
            json = content.Substring(call.Start + tc.Open.Length, call.Length - tc.Open.Length - tc.Close.Length);
        }
        else if (thoughtWords is { } tw && Find(content, tw.Open, tw.Close) is { } thought)
        {
            prefix = content.Substring(thought.Start, thought.Length);
            json = content.Replace(prefix, "");
        }
        var parsed = Parse(json, "function call");
        var calls = (parsed as List<object?> ?? [parsed]).Select(c =>
        {
            var d = AsDict(c, "function call");
            if (!d.TryGetValue("name", out var name) || !d.TryGetValue("arguments", out var arguments))
                throw new PeftFormatException("function call", $"expected {{\"name\": ..., \"arguments\": ...}}, found {json}");
            // LLaMA-Factory round-trips arguments through json.dumps/json.loads; a string stays a string.
            return (Name: Py.Str(name), Args: arguments);
        }).ToList();
        string text = format switch
        {
            "qwen" => string.Join("\n", calls.Select(c => $"<tool_call>\n{Dumps(new PyDict { ["name"] = c.Name, ["arguments"] = c.Args })}\n</tool_call>")),
            "llama3" => calls.Count == 1 ? Dumps(new PyDict { ["name"] = calls[0].Name, ["parameters"] = calls[0].Args })
                : Dumps(calls.Select(c => (object?)new PyDict { ["name"] = c.Name, ["parameters"] = c.Args }).ToList()),
            "mistral" => Dumps(calls.Select(c => (object?)new PyDict { ["name"] = c.Name, ["arguments"] = c.Args }).ToList()),
            _ => string.Join("\n", calls.Select(c => $"Action: {c.Name}\nAction Input: {Dumps(c.Args)}")),
        };
        return prefix + text;
    }

    static (int Start, int Length)? Find(string s, string open, string close)
    {
        int a = s.IndexOf(open, StringComparison.Ordinal);
        if (a < 0) return null;
        int b = s.IndexOf(close, a + open.Length, StringComparison.Ordinal);
        return b < 0 ? null : (a, b + close.Length - a);
    }
}
