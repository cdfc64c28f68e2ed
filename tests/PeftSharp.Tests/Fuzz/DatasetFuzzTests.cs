using System.Text;
using CsCheck;
using PeftSharp.Training.Data;

namespace PeftSharp.Tests.Fuzz;

/// <summary>Generated dataset files (JSONL and JSON arrays, every format): loaded, or refused naming the file (and line).</summary>
public class DatasetFuzzTests
{
    static readonly string[] Values =
    [
        "1", "-5", "1.5", "\"text\"", "\"\"", "null", "true", "[]", "[1, 2, 3]", "[1, 2.5]", "[1, 999999]", "[-100, 3]", "[\"a\"]", "{}",
        "[{\"role\": \"user\", \"content\": \"hi\"}, {\"role\": \"assistant\", \"content\": \"yo\"}]",
        "[{\"from\": \"human\", \"value\": \"hi\"}, {\"from\": 1, \"value\": \"x\"}]", "[{\"role\": \"user\"}]", "[[\"q\", \"a\"]]", "[[1, 2]]",
        "9223372036854775808", "1e400",
    ];
    static readonly string[] Fields = ["input_ids", "labels", "attention_mask", "label", "text", "instruction", "input", "output", "messages", "conversations", "history", "system"];

    static string ValidRecord(Random rng)
    {
        var ids = Enumerable.Range(0, 2 + rng.Next(8)).Select(_ => rng.Next(320)).ToList();
        return $"{{\"input_ids\": [{string.Join(", ", ids)}], \"labels\": [-100, {string.Join(", ", ids.Skip(1))}]}}";
    }

    static string Record(Random rng)
    {
        var parts = Enumerable.Range(0, 1 + rng.Next(4)).Select(_ => $"\"{Fields[rng.Next(Fields.Length)]}\": {Values[rng.Next(Values.Length)]}").Distinct();
        return "{" + string.Join(", ", parts) + "}";
    }

    [Fact]
    public void Generated_datasets_load_or_are_refused_with_file_and_line()
    {
        var dir = TestPaths.TempDir();
        var h = new FuzzHarness("datasets", TimeSpan.FromSeconds(5));
        Gen.Select(Gen.Int, Gen.Int[1, 6], Gen.Bool, Gen.Int[0, 5]).Fuzz((seed, count, array, format) =>
        {
            var rng = new Random(seed);
            // Half the files are valid pre-tokenized data with at most one hostile record, half are random records.
            bool valid = rng.Next(2) == 0;
            var records = Enumerable.Range(0, count).Select(_ => valid ? ValidRecord(rng) : Record(rng)).ToList();
            if (valid && rng.Next(2) == 0) records[rng.Next(records.Count)] = Record(rng);
            if (rng.Next(5) == 0) records.Insert(rng.Next(records.Count), rng.Next(2) == 0 ? "{\"input_ids\": [1, 2" : "[1, 2]");
            var path = Path.Combine(dir, array ? "d.json" : "d.jsonl");
            File.WriteAllText(path, array ? "[\n" + string.Join(",\n", records) + "\n]\n" : string.Join("\n", records) + "\n");
            var options = new DataOptions { VocabSize = 320, CutoffLen = 16, Format = valid || format == 5 ? null : (DatasetFormat)format };
            h.Case(string.Join(" | ", records), path, () =>
            {
                // No tokenizer: text formats must be refused clearly, pre-tokenized ones fully checked.
                var (train, _) = DatasetBuilder.Load(path, null, options);
                Assert.All(train, r => Assert.All(r.InputIds, id => Assert.InRange(id, 0, 319)));
            });
        }, iter: FuzzHarness.Iter(400));
        h.Report(minRejected: 200);
    }

    [Fact]
    public void Json_array_of_20k_records_loads_in_linear_time()
    {
        var sb = new StringBuilder("[");
        for (int i = 0; i < 20_000; i++) sb.Append(i == 0 ? "\n" : ",\n").Append("{\"input_ids\": [1, 2, 3], \"labels\": [-100, 2, 3]}");
        var path = Path.Combine(TestPaths.TempDir(), "big.json");
        File.WriteAllText(path, sb.Append("\n]").ToString());
        var h = new FuzzHarness("datasets-20k", TimeSpan.FromSeconds(10));
        h.Case("20k-record JSON array", path, () => Assert.Equal(20_000, DatasetBuilder.Load(path, null, new DataOptions { VocabSize = 320 }).Train.Count));
    }
}
