using System.Globalization;
using System.Text.Json;
using System.Text.Json.Nodes;
using PeftSharp;

namespace PeftSharp.Bench;

/// <summary>
/// <c>--compare-python FILE.json</c>: reads the Python stack's figures for the same benchmark (written by
/// <c>bench/python/train_step.py</c>: <c>{"benchmark", "stack", "machine", "rows": [{column: value}]}</c>) and prints,
/// for every row of ours whose text columns match a Python row, each shared numeric column's ratio ours / Python.
/// </summary>
public static class PythonComparison
{
    public static IEnumerable<string> Compare(string benchmark, BenchResult ours, string path)
    {
        if (!File.Exists(path)) throw new PeftFormatException(path, "--compare-python: file not found");
        JsonObject doc;
        try { doc = JsonNode.Parse(File.ReadAllText(path)) as JsonObject ?? throw new PeftFormatException(path, "expected a JSON object"); }
        catch (JsonException e) { throw new PeftFormatException(path, $"not valid JSON ({e.Message})"); }
        var name = doc["benchmark"]?.GetValue<string>() ?? throw new PeftFormatException(path, "field 'benchmark' is missing");
        if (name != benchmark) throw new PeftFormatException(path, $"field 'benchmark' is '{name}', this run is '{benchmark}'");
        if (doc["rows"] is not JsonArray rows || rows.Count == 0) throw new PeftFormatException(path, "field 'rows' must be a non-empty array of objects");
        var stack = doc["stack"]?.ToString() ?? "Python stack";
        var lines = new List<string> { $"Against {stack} ({Path.GetFileName(path)}; machine: {doc["machine"]?["cpu"]?.ToString() ?? "not given"}); ratio = PeftSharp / Python, below 1 is faster:" };
        int matched = 0;
        foreach (var row in ours.Rows)
        {
            var cells = ours.Columns.Zip(row).ToList();
            var keys = cells.Where(c => c.Second is string).ToList();
            var match = rows.OfType<JsonObject>().FirstOrDefault(p => keys.All(k => p[k.First] is null || p[k.First]!.ToString() == (string)k.Second));
            if (match is null) continue;
            var ratios = cells.Where(c => c.Second is double or float or int or long && match[c.First] is JsonValue v && v.TryGetValue<double>(out _))
                .Select(c =>
                {
                    double mine = Convert.ToDouble(c.Second, CultureInfo.InvariantCulture), theirs = match[c.First]!.GetValue<double>();
                    return string.Create(CultureInfo.InvariantCulture, $"{c.First} {mine:G4} vs {theirs:G4} = {(theirs == 0 ? double.NaN : mine / theirs):F2}x");
                }).ToList();
            if (ratios.Count == 0) continue;
            matched++;
            lines.Add($"  {string.Join(", ", keys.Select(k => $"{k.First}={k.Second}"))}: {string.Join("; ", ratios)}");
        }
        if (matched == 0) lines.Add($"  no row of {path} has this run's {string.Join("/", ours.Columns)} text values; nothing to compare");
        return lines;
    }
}
