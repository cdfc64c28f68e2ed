using System.Text.Json;
using System.Text.Json.Nodes;

namespace PeftSharp.Training.Data;

/// <summary>sharegpt/openai message tags (dataset_info.json's "tags").</summary>
public sealed record MessageTags(string Role, string Content, string User, string Assistant, string Observation, string Function, string System)
{
    /// <summary>OpenAI formatting: consecutive tool results become one observation turn.</summary>
    public bool JoinObservations { get; init; }
    public static readonly MessageTags ShareGpt = new("from", "value", "human", "gpt", "observation", "function_call", "system");
    public static readonly MessageTags OpenAi = new("role", "content", "user", "assistant", "tool", "function_call", "system") { JoinObservations = true };
}

/// <summary>LLaMA-Factory's DatasetAttr for a local file: formatting, columns and tags.</summary>
public sealed record DatasetAttr
{
    public string? Prompt { get; init; } = "instruction";
    public string? Query { get; init; } = "input";
    public string? Response { get; init; } = "output";
    public string? History { get; init; }
    public string? Messages { get; init; }
    public string? System { get; init; }
    public string? Tools { get; init; }
    /// <summary>Null: picked per record (role/content messages are OpenAI style, from/value ShareGPT).</summary>
    public MessageTags? Tags { get; init; }
    public int? NumSamples { get; init; }

    /// <summary>A plain file without dataset_info.json: the usual column names, system and history read when present.</summary>
    public static readonly DatasetAttr PlainFile = new() { System = "system", History = "history", Tools = "tools" };
}

/// <summary>One dataset to load: its file, the format its records have and how to read them.</summary>
public sealed record DatasetSource(string Name, string File, DatasetFormat? Format, DatasetAttr Attr);

/// <summary>
/// Resolves LLaMA-Factory's <c>dataset: a,b</c> against <c>dataset_dir/dataset_info.json</c> (file_name,
/// formatting alpaca | sharegpt | openai, columns, tags, num_samples); a name that is not registered but is a file
/// path is read as a plain file (format detected per record).
/// </summary>
public static class DatasetRegistry
{
    public const string InfoFile = "dataset_info.json";

    static readonly string[] ColumnNames = ["prompt", "query", "response", "history", "messages", "system", "tools", "images", "videos", "audios", "chosen", "rejected", "kto_tag"];
    static readonly string[] TagNames = ["role_tag", "content_tag", "user_tag", "assistant_tag", "observation_tag", "function_tag", "system_tag"];
    static readonly string[] EntryKeys = ["file_name", "formatting", "ranking", "subset", "split", "folder", "num_samples", "columns", "tags", "hf_hub_url", "ms_hub_url", "om_hub_url", "script_url", "cloud_file_name", "load_from"];

    /// <param name="origin">Where the names come from, for messages (e.g. "x.yaml: dataset").</param>
    public static List<DatasetSource> Resolve(string names, string datasetDir, Func<string, string> resolvePath, string origin = "dataset")
    {
        var dir = resolvePath(datasetDir);
        var infoPath = Path.Combine(dir, InfoFile);
        JsonObject? info = null;
        if (File.Exists(infoPath))
        {
            try { info = JsonNode.Parse(File.ReadAllText(infoPath), documentOptions: new JsonDocumentOptions { CommentHandling = JsonCommentHandling.Skip, AllowTrailingCommas = true }) as JsonObject; }
            catch (JsonException e) { throw new PeftFormatException(infoPath, $"not valid JSON (line {e.LineNumber + 1}: {e.Message})"); }
            if (info is null) throw new PeftFormatException(infoPath, "expected an object of dataset name → {file_name, formatting, columns, ...}");
        }
        var result = new List<DatasetSource>();
        foreach (var name in names.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries))
        {
            if (info?[name] is JsonObject entry) { result.Add(FromEntry(name, entry, dir, infoPath)); continue; }
            if (info is not null && info.ContainsKey(name)) throw new PeftFormatException(infoPath, $"dataset '{name}' must be an object of file_name, formatting, columns, ... (found {info[name]?.ToJsonString() ?? "null"})");
            var file = resolvePath(name);
            if (File.Exists(file)) { result.Add(new DatasetSource(name, file, null, DatasetAttr.PlainFile)); continue; }
            var inDir = Path.Combine(dir, name);
            if (File.Exists(inDir)) { result.Add(new DatasetSource(name, inDir, null, DatasetAttr.PlainFile)); continue; }
            throw new PeftConfigException(info is null
                ? $"{origin} '{name}': no file '{name}' and no {infoPath} to look it up in (set dataset_dir to the folder with {InfoFile})"
                : $"{origin} '{name}' is not defined in {infoPath} and is not a file ({Known(info, name)})");
        }
        return result;
    }

    // The names a registry defines, closest to the one asked for first (LLaMA-Factory's own file defines over a hundred).
    static string Known(JsonObject info, string name)
    {
        var names = info.Select(p => p.Key).OrderBy(n => Recipes.RecipeKeys.Distance(name, n)).ThenBy(n => n, StringComparer.Ordinal).ToList();
        return $"it defines {names.Count}: {string.Join(", ", names.Take(8))}{(names.Count > 8 ? ", ..." : "")}";
    }

    static DatasetSource FromEntry(string name, JsonObject e, string dir, string infoPath)
    {
        string Where(string key) => $"{infoPath}: dataset '{name}', '{key}'";
        string? Str(JsonObject o, string key, string where) => o[key] switch
        {
            null => null,
            JsonValue v when v.GetValueKind() == JsonValueKind.String => v.GetValue<string>(),
            JsonValue v when v.GetValueKind() == JsonValueKind.Null => null,
            var other => throw new PeftFormatException(infoPath, $"{where} must be a string (found {other.ToJsonString()})"),
        };
        foreach (var (key, _) in e)
            if (!EntryKeys.Contains(key)) throw new PeftFormatException(infoPath, $"dataset '{name}': unknown key '{key}' (known: {string.Join(", ", EntryKeys)})");
        foreach (var hub in new[] { "hf_hub_url", "ms_hub_url", "om_hub_url", "script_url", "cloud_file_name" })
            if (e.ContainsKey(hub) && !e.ContainsKey("file_name"))
                throw new PeftConfigException($"{Where(hub)}: hub and script datasets need a download; PeftSharp reads local files only (add \"file_name\")");
        if (e["ranking"] is JsonValue r && r.GetValueKind() == JsonValueKind.True)
            throw new PeftConfigException($"{Where("ranking")}: ranking (preference) datasets need stage rm/dpo, which PeftSharp does not have");
        var fileName = Str(e, "file_name", Where("file_name")) ?? throw new PeftFormatException(infoPath, $"dataset '{name}' has no \"file_name\"");
        var formatting = Str(e, "formatting", Where("formatting")) ?? "alpaca";
        if (formatting is not ("alpaca" or "sharegpt" or "openai"))
            throw new PeftFormatException(infoPath, $"{Where("formatting")} is '{formatting}'; expected alpaca, sharegpt or openai");
        var columns = e["columns"] as JsonObject ?? (e["columns"] is null ? new JsonObject() : throw new PeftFormatException(infoPath, $"{Where("columns")} must be an object"));
        var tags = e["tags"] as JsonObject ?? (e["tags"] is null ? new JsonObject() : throw new PeftFormatException(infoPath, $"{Where("tags")} must be an object"));
        foreach (var (key, _) in columns) if (!ColumnNames.Contains(key)) throw new PeftFormatException(infoPath, $"{Where("columns")}: unknown column '{key}' (known: {string.Join(", ", ColumnNames)})");
        foreach (var (key, _) in tags) if (!TagNames.Contains(key)) throw new PeftFormatException(infoPath, $"{Where("tags")}: unknown tag '{key}' (known: {string.Join(", ", TagNames)})");
        foreach (var media in new[] { "images", "videos", "audios" })
            if (columns.ContainsKey(media)) throw new PeftConfigException($"{Where("columns")}: '{media}' needs a multimodal model; PeftSharp trains text models");
        string? Col(string key, string? fallback) => columns.ContainsKey(key) ? Str(columns, key, Where("columns") + $".{key}") : fallback;
        var baseTags = formatting == "openai" ? MessageTags.OpenAi : MessageTags.ShareGpt;
        string Tag(string key, string fallback) => Str(tags, key, Where("tags") + $".{key}") ?? fallback;
        var attr = new DatasetAttr
        {
            // LLaMA-Factory's defaults: a column not listed keeps its default name; system/history/tools only when listed.
            Prompt = Col("prompt", "instruction"), Query = Col("query", "input"), Response = Col("response", "output"),
            History = Col("history", null), Messages = Col("messages", "conversations"), System = Col("system", null), Tools = Col("tools", null),
            Tags = formatting == "alpaca" ? null : baseTags with
            {
                Role = Tag("role_tag", baseTags.Role), Content = Tag("content_tag", baseTags.Content), User = Tag("user_tag", baseTags.User),
                Assistant = Tag("assistant_tag", baseTags.Assistant), Observation = Tag("observation_tag", baseTags.Observation),
                Function = Tag("function_tag", baseTags.Function), System = Tag("system_tag", baseTags.System),
            },
            NumSamples = e["num_samples"] switch
            {
                null => null,
                JsonValue n when n.TryGetValue<int>(out var k) && k > 0 => k,
                var other => throw new PeftFormatException(infoPath, $"{Where("num_samples")} must be a positive integer (found {other.ToJsonString()})"),
            },
        };
        var path = Path.Combine(dir, fileName);
        if (Directory.Exists(path)) throw new PeftConfigException($"{Where("file_name")}: '{path}' is a folder; name one .json/.jsonl file");
        if (!File.Exists(path)) throw new PeftFormatException(path, $"not found (named by dataset '{name}' in {infoPath})");
        return new DatasetSource(name, path, formatting == "alpaca" ? DatasetFormat.Alpaca : DatasetFormat.ShareGpt, attr);
    }
}
