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

    static string? MessageString(DatasetRecord r, JsonNode? v, string what) =>
        v is null ? null
        : v.GetValueKind() == JsonValueKind.String ? v.GetValue<string>()
        : throw r.Error($"a message's {what} must be a string (found {v.ToJsonString()})");

    /// <summary>alpaca (system?, history?, instruction, input, output) or sharegpt/messages as a conversation that ends with the assistant.</summary>
    public static List<ChatMessage> ToMessages(DatasetRecord r, DatasetFormat format)
    {
        var messages = new List<ChatMessage>();
        if (format == DatasetFormat.Alpaca)
        {
            var system = OptionalString(r, "system");
            if (system.Length > 0) messages.Add(new("system", system));
            if (r.Json["history"] is JsonArray history)
                foreach (var turn in history)
                {
                    if (turn is not JsonArray { Count: 2 } pair || pair[0]?.GetValueKind() != JsonValueKind.String || pair[1]?.GetValueKind() != JsonValueKind.String)
                        throw r.Error("'history' must be a list of [instruction, response] string pairs");
                    messages.Add(new("user", pair[0]!.GetValue<string>()));
                    messages.Add(new("assistant", pair[1]!.GetValue<string>()));
                }
            var instruction = RequiredString(r, "instruction");
            var input = OptionalString(r, "input");
            messages.Add(new("user", input.Length > 0 ? $"{instruction}\n{input}" : instruction));
            messages.Add(new("assistant", RequiredString(r, "output")));
            return messages;
        }
        bool sharegpt = r.Json.ContainsKey("conversations");
        var list = r.Json[sharegpt ? "conversations" : "messages"] as JsonArray
            ?? throw r.Error($"'{(sharegpt ? "conversations" : "messages")}' must be a list of messages");
        foreach (var node in list)
        {
            if (node is not JsonObject m) throw r.Error("each message must be an object");
            string? role = MessageString(r, m[sharegpt ? "from" : "role"] ?? m["role"] ?? m["from"], "role");
            string? content = MessageString(r, m[sharegpt ? "value" : "content"] ?? m["content"] ?? m["value"], "content");
            if (role is null || content is null) throw r.Error("each message needs role/content (or from/value)");
            messages.Add(new(role switch
            {
                "human" or "user" => "user",
                "gpt" or "assistant" or "model" or "bot" => "assistant",
                "system" => "system",
                _ => throw r.Error($"unknown message role '{role}' (expected system, user/human or assistant/gpt)"),
            }, content));
        }
        var turns = messages.SkipWhile(m => m.Role == "system").ToList();
        if (turns.Count == 0 || turns[^1].Role != "assistant") throw r.Error("a conversation must end with an assistant message");
        for (int i = 0; i < turns.Count; i++)
            if (turns[i].Role != (i % 2 == 0 ? "user" : "assistant"))
                throw r.Error($"message {i + 1} after the system prompt is '{turns[i].Role}'; turns must alternate user, assistant");
        return messages;
    }
}
