using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;

namespace PeftSharp.Training.Data;

/// <summary>One JSON record of a dataset file, with the 1-based line where it starts (for error messages).</summary>
public sealed record DatasetRecord(string File, int Line, JsonObject Json)
{
    public PeftFormatException Error(string message) => new(File, Line, message);
}

/// <summary>Reads JSONL (one object per line), JSON (an array of objects) or plain text (.txt: each line a {"text": line} record) dataset files.</summary>
public static class DatasetReader
{
    public static List<DatasetRecord> Read(string path)
    {
        if (!File.Exists(path)) throw new PeftFormatException(path, "dataset file not found");
        var ext = Path.GetExtension(path).ToLowerInvariant();
        if (ext is ".csv" or ".parquet" or ".arrow")
            throw new PeftFormatException(path, $"{ext} datasets are not read here; convert it to JSON lines (one object per line) or a JSON array");
        var bytes = File.ReadAllBytes(path);
        if (ext == ".txt") return NonEmpty(path, ReadText(path, bytes));
        int start = 0;
        while (start < bytes.Length && bytes[start] is (byte)' ' or (byte)'\t' or (byte)'\r' or (byte)'\n' or 0xEF or 0xBB or 0xBF) start++;
        return NonEmpty(path, start < bytes.Length && bytes[start] == (byte)'[' ? ReadArray(path, bytes) : ReadLines(path, bytes));
    }

    static List<DatasetRecord> NonEmpty(string path, List<DatasetRecord> records) =>
        records.Count > 0 ? records : throw new PeftFormatException(path, "the dataset has no records");

    // As the datasets library's text loader (LLaMA-Factory's .txt files): one "text" record per line; blank lines carry nothing to learn.
    static List<DatasetRecord> ReadText(string path, byte[] bytes)
    {
        var lines = Encoding.UTF8.GetString(bytes).TrimStart('\uFEFF').Split('\n');
        var list = new List<DatasetRecord>();
        for (int i = 0; i < lines.Length; i++)
            if (lines[i].TrimEnd('\r') is { Length: > 0 } text && !string.IsNullOrWhiteSpace(text))
                list.Add(new DatasetRecord(path, i + 1, new JsonObject { ["text"] = text }));
        return list;
    }

    static List<DatasetRecord> ReadLines(string path, byte[] bytes)
    {
        var list = new List<DatasetRecord>();
        var lines = Encoding.UTF8.GetString(bytes).TrimStart('\uFEFF').Split('\n');
        for (int i = 0; i < lines.Length; i++)
        {
            var line = lines[i].Trim();
            if (line.Length == 0) continue;
            JsonNode? node;
            try { node = JsonNode.Parse(line); }
            catch (JsonException e) { throw new PeftFormatException(path, i + 1, $"not valid JSON ({e.Message})"); }
            if (node is not JsonObject obj) throw new PeftFormatException(path, i + 1, "each line must be a JSON object");
            list.Add(new DatasetRecord(path, i + 1, NoDuplicateKeys(obj, path, i + 1)));
        }
        return list;
    }

    // JsonObject builds its key index lazily and throws ArgumentException there on a repeated key: surface it now, with the line.
    static JsonObject NoDuplicateKeys(JsonObject obj, string path, int line)
    {
        try { _ = obj.Count; return obj; }
        catch (ArgumentException e) { throw new PeftFormatException(path, line, $"a key appears twice in the record ({e.Message})"); }
    }

    static List<DatasetRecord> ReadArray(string path, byte[] bytes)
    {
        var list = new List<DatasetRecord>();
        // Records come in file order, so the line count only ever moves forward: one pass over the file in all.
        int line = 1;
        long counted = 0;
        int LineAt(long offset)
        {
            line += bytes.AsSpan((int)counted, (int)(Math.Min(offset, bytes.Length) - counted)).Count((byte)'\n');
            counted = Math.Min(offset, bytes.Length);
            return line;
        }
        try
        {
            var reader = new Utf8JsonReader(bytes, new JsonReaderOptions { CommentHandling = JsonCommentHandling.Skip, AllowTrailingCommas = true });
            reader.Read(); // [
            while (reader.Read() && reader.TokenType != JsonTokenType.EndArray)
            {
                long at = reader.TokenStartIndex;
                if (reader.TokenType != JsonTokenType.StartObject)
                    throw new PeftFormatException(path, LineAt(at), $"each array element must be a JSON object (found {reader.TokenType})");
                var obj = JsonNode.Parse(ref reader)!.AsObject();
                int recordLine = LineAt(at);
                list.Add(new DatasetRecord(path, recordLine, NoDuplicateKeys(obj, path, recordLine)));
            }
        }
        catch (JsonException e) { throw new PeftFormatException(path, (e.LineNumber ?? 0) + 1, $"not valid JSON ({e.Message})"); }
        return list;
    }
}
