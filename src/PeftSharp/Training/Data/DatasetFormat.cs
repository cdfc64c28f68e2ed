using System.Text.Json;
using System.Text.Json.Nodes;

namespace PeftSharp.Training.Data;

/// <summary>The record layouts PeftSharp reads (LLaMA-Factory's alpaca and sharegpt, pre-tokenized, classification, plain text).</summary>
public enum DatasetFormat { Alpaca, ShareGpt, Tokenized, Classification, Text }

public sealed record ChatMessage(string Role, string Content);

/// <summary>Recognizes a record's format and turns alpaca/sharegpt records into chat messages.</summary>
public static class DatasetFormats
{
    public static readonly IReadOnlyList<string> Names = new[] { "alpaca", "sharegpt", "tokenized", "classification", "text" };

    public static DatasetFormat Parse(string name) => name.ToLowerInvariant() switch
    {
        "alpaca" => DatasetFormat.Alpaca,
        "sharegpt" or "messages" or "openai" => DatasetFormat.ShareGpt,
        "tokenized" or "pretokenized" => DatasetFormat.Tokenized,
        "classification" => DatasetFormat.Classification,
        "text" => DatasetFormat.Text,
        _ => throw new PeftConfigException($"dataset_format '{name}' is not supported (supported: {string.Join(", ", Names)})"),
    };

    /// <summary>Detects the format from the first record's keys.</summary>
    public static DatasetFormat Detect(DatasetRecord r)
    {
        var j = r.Json;
        if (j.ContainsKey("input_ids")) return DatasetFormat.Tokenized;
        if (j.ContainsKey("messages") || j.ContainsKey("conversations")) return DatasetFormat.ShareGpt;
        if (j.ContainsKey("instruction")) return DatasetFormat.Alpaca;
        if (j.ContainsKey("text") && j.ContainsKey("label")) return DatasetFormat.Classification;
        if (j.ContainsKey("text")) return DatasetFormat.Text;
        throw r.Error($"cannot tell the dataset format from the keys [{string.Join(", ", j.Select(p => p.Key))}]; " +
            "expected instruction/input/output (alpaca), messages or conversations (sharegpt), input_ids (tokenized), text+label (classification) or text; or set dataset_format");
    }

    internal static string RequiredString(DatasetRecord r, string key)
    {
        var v = r.Json[key] ?? throw r.Error($"missing field '{key}'");
        return v.GetValueKind() == JsonValueKind.String ? v.GetValue<string>() : throw r.Error($"field '{key}' must be a string (found {v.GetValueKind()})");
    }

    internal static string OptionalString(DatasetRecord r, string key)
    {
        var v = r.Json[key];
        if (v is null || v.GetValueKind() == JsonValueKind.Null) return "";
        return v.GetValueKind() == JsonValueKind.String ? v.GetValue<string>() : throw r.Error($"field '{key}' must be a string (found {v.GetValueKind()})");
    }

    /// <summary>Stage pt: the document is the record's first prompt (alpaca prompt + "\n" + query, or the first message).</summary>
    public static string DocumentText(DatasetRecord r, DatasetFormat format, DatasetAttr attr)
    {
        if (format == DatasetFormat.Alpaca)
            return string.Join("\n", new[] { attr.Prompt, attr.Query }.Where(c => c is not null).Select(c => OptionalString(r, c!)).Where(x => x.Length > 0));
        var (c, skipped) = ToConversation(r, format, attr);
        return c?.Turns[0].Content ?? throw r.Error($"no document text ({skipped})");
    }

    /// <summary>
    /// LLaMA-Factory's converters (data/converter.py): an alpaca or sharegpt/openai record as turns (user/observation ↔
    /// assistant/function, ending with the answer), its system prompt and its tools JSON. <paramref name="attr"/> carries
    /// dataset_info.json's columns and tags; a plain file uses the usual column names. Null when LLaMA-Factory would
    /// skip the record as abnormal (the reason is returned).
    /// </summary>
    public static (Conversation? Value, string? Skipped) ToConversation(DatasetRecord r, DatasetFormat format, DatasetAttr attr)
    {
        string Opt(string? column) => column is null ? "" : OptionalString(r, column);
        string Tools() => attr.Tools is { } t && r.Json[t] is { } node
            ? node.GetValueKind() == JsonValueKind.String ? node.GetValue<string>() : Tokenization.ChatTemplates.Jinja.PyJson.Dumps(Tokenization.ChatTemplates.Jinja.Py.FromJson(node), false, null, null, null, false)
            : "";
        var turns = new List<ChatMessage>();
        if (format == DatasetFormat.Alpaca)
        {
            if (attr.History is { } h && r.Json[h] is JsonArray history)
                foreach (var turn in history)
                {
                    if (turn is not JsonArray { Count: 2 } pair || pair[0]?.GetValueKind() != JsonValueKind.String || pair[1]?.GetValueKind() != JsonValueKind.String)
                        throw r.Error($"'{h}' must be a list of [instruction, response] string pairs");
                    turns.Add(new("user", pair[0]!.GetValue<string>()));
                    turns.Add(new("assistant", pair[1]!.GetValue<string>()));
                }
            var query = new[] { Opt(attr.Prompt), Opt(attr.Query) }.Where(x => x.Length > 0);
            turns.Add(new("user", string.Join("\n", query)));
            if (attr.Response is null || r.Json[attr.Response] is not JsonValue v || v.GetValueKind() != JsonValueKind.String)
                throw r.Error($"missing string field '{attr.Response ?? "output"}' (the answer)");
            turns.Add(new("assistant", v.GetValue<string>()));
            return (new Conversation(turns, Opt(attr.System), Tools()), null);
        }
        var column = attr.Messages ?? (r.Json.ContainsKey("conversations") ? "conversations" : "messages");
        var list = r.Json[column] as JsonArray ?? throw r.Error($"'{column}' must be a list of messages");
        var tags = attr.Tags ?? (list.FirstOrDefault() is JsonObject first && first.ContainsKey("role") ? MessageTags.OpenAi : MessageTags.ShareGpt);
        // A missing or null field is null (an OpenAI tool call has content: null); any other non-string is an error.
        string? Field(JsonObject m, string key, string what) => m[key] switch
        {
            null => null,
            JsonValue v when v.GetValueKind() == JsonValueKind.String => v.GetValue<string>(),
            var other => throw r.Error($"a message's {what} must be a string (found {other.ToJsonString()})"),
        };
        string system = Opt(attr.System);
        var pending = new List<string>();
        for (int i = 0; i < list.Count; i++)
        {
            if (list[i] is not JsonObject m) throw r.Error("each message must be an object");
            var role = Field(m, tags.Role, "role") ?? throw r.Error($"message {i + 1} has no '{tags.Role}'");
            var content = Field(m, tags.Content, "content");
            if (i == 0 && role == tags.System) { system = content ?? ""; continue; }
            // OpenAI style: an assistant message with tool_calls is a function call; consecutive tool results join.
            if ((role == tags.Assistant || role == tags.Function) && m["tool_calls"] is JsonArray calls && calls.Count > 0)
            {
                content = Tokenization.ChatTemplates.Jinja.PyJson.Dumps(calls.Select(c => c is JsonObject call && call["function"] is JsonObject f
                    ? Tokenization.ChatTemplates.Jinja.Py.FromJson(f) : throw r.Error($"message {i + 1}: each tool_calls item must be an object with a 'function' object")).ToList(), false, null, null, null, false);
                role = tags.Function;
            }
            if (content is null) throw r.Error($"message {i + 1} has no string '{tags.Content}'");
            if (tags.JoinObservations && role == tags.Observation) { pending.Add(content); continue; }
            if (pending.Count > 0) { turns.Add(new("observation", string.Join("\n</tool_response>\n<tool_response>\n", pending))); pending.Clear(); }
            var mapped = role == tags.User ? "user" : role == tags.Assistant ? "assistant" : role == tags.Observation ? "observation"
                : role == tags.Function ? "function" : role == tags.System ? "system" : null;
            if (mapped is null) return (null, $"unknown role '{role}'");
            turns.Add(new(mapped, content));
        }
        if (pending.Count > 0) turns.Add(new("observation", string.Join("\n</tool_response>\n<tool_response>\n", pending)));
        for (int i = 0; i < turns.Count; i++)
            if (!(i % 2 == 0 ? turns[i].Role is "user" or "observation" : turns[i].Role is "assistant" or "function"))
                return (null, "invalid role order (turns must alternate user/observation and assistant/function)");
        if (turns.Count == 0 || turns.Count % 2 != 0) return (null, "invalid message count (a conversation must end with an answer)");
        return (new Conversation(turns, system, Tools()), null);
    }
}

/// <summary>A record as LLaMA-Factory aligns it: alternating turns that end with the answer, the system prompt, the tools JSON.</summary>
public sealed record Conversation(List<ChatMessage> Turns, string System, string Tools);
