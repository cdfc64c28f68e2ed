using PeftSharp.Tests.Tokenization;
using PeftSharp.Tokenization;
using PeftSharp.Training.Data;

namespace PeftSharp.Tests.Training;

public class DatasetTests
{
    static HfTokenizer Tokenizer()
    {
        var dir = TestPaths.TempDir();
        TinyTokenizer.WriteTo(dir);
        return HfTokenizer.FromFolder(dir);
    }

    static string Write(string name, string text)
    {
        var path = Path.Combine(TestPaths.TempDir(), name);
        File.WriteAllText(path, text);
        return path;
    }

    [Fact]
    public void Alpaca_rows_mask_the_prompt_and_end_with_eos()
    {
        var tok = Tokenizer();
        var path = Write("a.jsonl", "{\"instruction\":\"hello\",\"input\":\"\",\"output\":\"world\"}\n");
        var (train, eval) = DatasetBuilder.Load(path, tok, new DataOptions { Template = PromptTemplate.BuiltIn("alpaca") });
        Assert.Empty(eval);
        var row = Assert.Single(train);
        // LLaMA-Factory's alpaca template: default system, user slot, answer + eos + "\n\n", each slot tokenized on its own.
        var prompt = tok.Encode("Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n", false)
            .Concat(tok.Encode("### Instruction:\nhello\n\n### Response:\n", false)).ToList();
        var response = tok.Encode("world", false).Append(tok.EosTokenId!.Value).Concat(tok.Encode("\n\n", false)).ToArray();
        Assert.Equal(prompt.Concat(response), row.InputIds);
        Assert.Equal(Enumerable.Repeat(-100, prompt.Count).Concat(response), row.Labels!);

        var (all, _) = DatasetBuilder.Load(path, tok, new DataOptions { Template = PromptTemplate.BuiltIn("alpaca"), TrainOnPrompt = true });
        Assert.Equal(all[0].InputIds, all[0].Labels);
    }

    [Fact]
    public void Sharegpt_conversations_train_on_every_assistant_turn_and_truncate()
    {
        var tok = Tokenizer();
        var path = Write("s.json", """
            [
              {"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "yo"},
                                 {"from": "human", "value": "again"}, {"from": "gpt", "value": "ok"}]}
            ]
            """);
        var (train, _) = DatasetBuilder.Load(path, tok, new DataOptions());
        var row = train[0];
        var trained = row.Labels!.Where(l => l != -100).ToArray();
        // LLaMA-Factory's "empty" template: answers as they are, no eos.
        var expected = tok.Encode("yo", false).Concat(tok.Encode("ok", false));
        Assert.Equal(expected, trained);

        var (cut, _) = DatasetBuilder.Load(path, tok, new DataOptions { CutoffLen = 4 });
        Assert.True(cut[0].InputIds.Length <= 4);
    }

    [Fact]
    public void Malformed_records_name_file_and_line()
    {
        var tok = Tokenizer();
        var bad = Write("bad.jsonl", "{\"instruction\":\"a\",\"output\":\"b\"}\n\n{\"instruction\":\"a\"}\n");
        var e = Assert.Throws<PeftFormatException>(() => DatasetBuilder.Load(bad, tok, new DataOptions()));
        Assert.Contains("bad.jsonl:3", e.Message);
        Assert.Contains("'output'", e.Message);

        var broken = Write("broken.jsonl", "{\"text\":\"a\"}\n{not json\n");
        Assert.Contains("broken.jsonl:2", Assert.Throws<PeftFormatException>(() => DatasetBuilder.Load(broken, tok, new DataOptions())).Message);

        var arr = Write("arr.json", "[\n {\"input_ids\": [1, 2]},\n {\"input_ids\": [1, \"x\"]}\n]");
        Assert.Contains("arr.json:3", Assert.Throws<PeftFormatException>(() => DatasetBuilder.Load(arr, null, new DataOptions())).Message);

        var unknown = Write("u.jsonl", "{\"question\":\"a\"}\n");
        Assert.Contains("cannot tell the dataset format", Assert.Throws<PeftFormatException>(() => DatasetBuilder.Load(unknown, tok, new DataOptions())).Message);

        var turns = Write("t.jsonl", "{\"messages\":[{\"role\":\"user\",\"content\":\"a\"}]}\n");
        var warnings = new List<string>();
        var noAnswer = Assert.Throws<PeftFormatException>(() => DatasetBuilder.Load(turns, tok, new DataOptions { Warn = warnings.Add })).Message;
        Assert.Contains("no row is left", noAnswer);
        Assert.Contains("t.jsonl: dropped 1 of 1 rows: invalid message count", Assert.Single(warnings));
    }

    [Fact]
    public void Tokenized_classification_split_and_packing()
    {
        var tok = Tokenizer();
        var lines = string.Join("\n", Enumerable.Range(0, 10).Select(i => $"{{\"input_ids\": [1, {i + 3}, {i + 4}], \"labels\": [-100, {i + 3}, {i + 4}]}}"));
        var path = Write("tok.jsonl", lines);
        var (train, eval) = DatasetBuilder.Load(path, null, new DataOptions { ValSize = 0.2, Seed = 5 });
        Assert.Equal(8, train.Count);
        Assert.Equal(2, eval.Count);
        Assert.Empty(train.Select(r => r.InputIds[1]).Intersect(eval.Select(r => r.InputIds[1])));
        var (packed, _) = DatasetBuilder.Load(path, null, new DataOptions { Packing = true, CutoffLen = 7 });
        Assert.Equal(new[] { 7, 7, 7, 7, 2 }, packed.Select(p => p.InputIds.Length));
        Assert.Equal(-100, packed[0].Labels![3]);

        var cls = Write("c.jsonl", "{\"text\":\"hello\",\"label\":1}\n{\"text\":\"world\",\"label\":\"neg\"}\n");
        var (rows, _) = DatasetBuilder.Load(cls, tok, new DataOptions { LabelMap = new Dictionary<string, int> { ["neg"] = 0 } });
        Assert.Equal(new int?[] { 1, 0 }, rows.Select(r => r.ClassLabel));
        Assert.Contains("c.jsonl:2", Assert.Throws<PeftFormatException>(() => DatasetBuilder.Load(cls, tok, new DataOptions())).Message);
    }
}
