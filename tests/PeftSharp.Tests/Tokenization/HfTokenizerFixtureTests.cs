using System.Collections.Concurrent;
using System.Text.Json;
using PeftSharp.Tokenization;
using Xunit.Abstractions;

namespace PeftSharp.Tests.Tokenization;

/// <summary>Every case of tokenizers/*/cases.jsonl (made with Hugging Face's tokenizers): ids, tokens and decoded text.</summary>
public class HfTokenizerFixtureTests(ITestOutputHelper output)
{
    static readonly ConcurrentDictionary<string, HfTokenizer> Loaded = new();

    /// <summary>A copied fixture folder (Apache-2.0/MIT files), loaded once per test run.</summary>
    internal static HfTokenizer Load(string name) =>
        Loaded.GetOrAdd(name, n => HfTokenizer.FromFolder(TestPaths.Data("tokenizers", n)));

    [Theory]
    [InlineData("gpt2")]
    [InlineData("bert-base-uncased")]
    [InlineData("mistral")]
    [InlineData("qwen3")]
    public void ReproducesEveryCase(string name) => CheckAll(Load(name), TestPaths.Data("tokenizers", name, "cases.jsonl"));

    /// <summary>Meta's llama3 tokenizer is not copied into the project (licence); it is read from ../shared when present.</summary>
    [Fact]
    public void ReproducesEveryCase_Llama3()
    {
        if (TestPaths.SharedFixtures() is not { } shared)
        {
            output.WriteLine("skipped: ../shared/fixtures is absent (the llama3 tokenizer is Meta's file and is not shipped)");
            return;
        }
        var dir = Path.Combine(shared, "tokenizers", "llama3");
        CheckAll(Loaded.GetOrAdd("llama3", _ => HfTokenizer.FromFolder(dir)), Path.Combine(dir, "cases.jsonl"));
    }

    static void CheckAll(HfTokenizer tok, string casesFile)
    {
        var failures = new List<string>();
        int count = 0;
        foreach (var line in File.ReadLines(casesFile).Where(l => l.Trim().Length > 0))
        {
            var c = JsonDocument.Parse(line).RootElement;
            var name = c.GetProperty("name").GetString();
            var text = c.GetProperty("text").GetString()!;
            var ids = Ints(c, "ids");
            var withSpecial = Ints(c, "ids_with_special");
            count++;
            var got = tok.Encode(text, addSpecialTokens: false).ToArray();
            if (Diff(ids, got) is { } d1) failures.Add($"{name}: ids {d1}");
            if (Diff(withSpecial, tok.Encode(text).ToArray()) is { } d2) failures.Add($"{name}: ids_with_special {d2}");
            var tokens = c.GetProperty("tokens").EnumerateArray().Select(t => t.GetString()).ToArray();
            if (!tokens.SequenceEqual(tok.ConvertIdsToTokens(ids))) failures.Add($"{name}: tokens differ");
            Check(failures, name, "decoded", c, tok.Decode(ids));
            Check(failures, name, "decoded_with_special", c, tok.Decode(withSpecial));
            Check(failures, name, "decoded_skip_special", c, tok.Decode(withSpecial, skipSpecialTokens: true));
        }
        Assert.True(count >= 31, $"{casesFile}: only {count} cases");
        Assert.True(failures.Count == 0, $"{failures.Count} mismatches in {casesFile}:\n" + string.Join("\n", failures));
    }

    static int[] Ints(JsonElement c, string field) => c.GetProperty(field).EnumerateArray().Select(e => e.GetInt32()).ToArray();

    static string? Diff(int[] expected, int[] actual)
    {
        int n = Math.Min(expected.Length, actual.Length);
        for (int i = 0; i < n; i++)
            if (expected[i] != actual[i]) return $"first difference at [{i}]: expected {expected[i]}, got {actual[i]} (lengths {expected.Length}/{actual.Length})";
        return expected.Length == actual.Length ? null : $"lengths differ: expected {expected.Length}, got {actual.Length}";
    }

    static void Check(List<string> failures, string? name, string field, JsonElement c, string actual)
    {
        var expected = c.GetProperty(field).GetString();
        if (expected != actual) failures.Add($"{name}: {field} expected {JsonSerializer.Serialize(expected)}, got {JsonSerializer.Serialize(actual)}");
    }
}
