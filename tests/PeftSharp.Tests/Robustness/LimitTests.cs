using System.Diagnostics;
using System.Text;
using System.Text.Json.Nodes;
using PeftSharp.Runtime;
using PeftSharp.Tokenization.ChatTemplates;
using PeftSharp.Training;
using PeftSharp.Training.Data;

namespace PeftSharp.Tests.Robustness;

/// <summary>The issue's hostile YAML, templates and datasets: a clear error naming the limit, quickly, never a hang or a crash.</summary>
public class LimitTests
{
    const string Head = "model_name_or_path: m\ndataset: d\n";

    [Fact]
    public void Nested_list_as_lora_target_names_the_line()
    {
        var e = Assert.Throws<PeftFormatException>(() => TrainConfig.Parse(Head + "lora_target: [[q_proj]]\n", "run.yaml"));
        Assert.Equal("run.yaml:3: each item of 'lora_target' must be a single value, found a list", e.Message);
    }

    [Fact]
    public void Mapping_as_a_key_names_the_line()
    {
        var e = Assert.Throws<PeftFormatException>(() => TrainConfig.Parse(Head + "? [a]\n: 1\n", "run.yaml"));
        Assert.Contains("run.yaml:3: a key must be a single value, found a list", e.Message);
    }

    [Fact]
    public void Alias_bomb_is_refused_before_anything_expands_it()
    {
        var yaml = new StringBuilder(Head + "a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for (int i = 1; i < 9; i++) yaml.Append($"a{i}: &a{i} [{string.Join(", ", Enumerable.Repeat($"*a{i - 1}", 10))}]\n");
        var sw = Stopwatch.StartNew();
        var e = Assert.Throws<PeftLimitException>(() => TrainConfig.Parse(yaml.ToString(), "bomb.yaml"));
        Assert.True(sw.ElapsedMilliseconds < 2000, $"{sw.ElapsedMilliseconds} ms");
        Assert.Contains("bomb.yaml:", e.Message);
        Assert.Contains("PEFTSHARP_YAML_MAX_NODES", e.Message);
    }

    [Fact]
    public void Alias_inside_its_own_anchor_is_refused_not_followed_forever()
    {
        var e = Assert.Throws<PeftFormatException>(() => TrainConfig.Parse(Head + "finetuning_type: adapter\nleave_out: &a [1, *a]\n", "cycle.yaml"));
        Assert.Contains("cycle.yaml:4: alias *a refers to the list or mapping that contains it", e.Message);
    }

    [Fact]
    public void Deep_yaml_nesting_is_refused()
    {
        var yaml = Head + "lora_target: " + new string('[', 500) + new string(']', 500) + "\n";
        var e = Assert.Throws<PeftLimitException>(() => TrainConfig.Parse(yaml, "deep.yaml"));
        Assert.Contains("PEFTSHARP_YAML_MAX_DEPTH", e.Message);
    }

    [Fact]
    public void Aliases_within_the_limit_still_work()
    {
        var c = TrainConfig.Parse(Head + "save_steps: &s 7\neval_steps: *s\n", "ok.yaml");
        Assert.Equal(7, c.Training.SaveSteps);
        Assert.Equal(7, c.Training.EvalSteps);
    }

    static string RenderTemplate(string source) =>
        new ChatTemplate(source).Render(new JsonArray(new JsonObject { ["role"] = "user", ["content"] = "hi" }));

    [Theory]
    [InlineData("{{ 'x' * 10000000000 }}", "PEFTSHARP_JINJA_MAX_OUTPUT")]
    [InlineData("{{ [1, 2] * 10000000000 }}", "PEFTSHARP_JINJA_MAX_OUTPUT")]
    [InlineData("{% set s = namespace(v='xxxxxxxxxxxxxxxx') %}{% for i in range(40) %}{% set s.v = s.v + s.v %}{% endfor %}{{ s.v }}", "PEFTSHARP_JINJA_MAX_OUTPUT")]
    [InlineData("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}", "PEFTSHARP_JINJA_MAX_ITERATIONS")]
    [InlineData("{% macro m(n) %}{{ m(n + 1) }}{% endmacro %}{{ m(0) }}", "PEFTSHARP_JINJA_MAX_DEPTH")]
    public void Runaway_template_is_stopped_by_a_named_limit(string template, string envVar)
    {
        var sw = Stopwatch.StartNew();
        var e = Assert.Throws<PeftLimitException>(() => RenderTemplate(template));
        Assert.Contains(envVar, e.Message);
        Assert.True(sw.ElapsedMilliseconds < 10_000, $"{sw.ElapsedMilliseconds} ms");
    }

    [Fact]
    public void Twenty_thousand_nested_parentheses_fail_to_parse_with_a_limit_not_a_stack_overflow()
    {
        var e = Assert.Throws<PeftLimitException>(() => new ChatTemplate("{{ " + new string('(', 20000) + "1" + new string(')', 20000) + " }}"));
        Assert.Contains("nesting exceeds the limit of 200 levels", e.Message);
        Assert.Equal("1", RenderTemplate("{{ " + new string('(', 50) + "1" + new string(')', 50) + " }}"));
    }

    [Fact]
    public void Wall_clock_budget_stops_a_slow_render()
    {
        using var _ = ResourceLimits.JinjaTimeoutMs.Override(200);
        using var __ = ResourceLimits.JinjaMaxIterations.Override(long.MaxValue);
        var e = Assert.Throws<PeftLimitException>(() => RenderTemplate("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"));
        Assert.Contains("rendering time exceeds the limit of 200 ms", e.Message);
    }

    [Fact]
    public void A_limit_can_be_raised()
    {
        Assert.Throws<PeftLimitException>(() => RenderTemplate("{{ 'x' * 5000000 }}"));
        using var _ = ResourceLimits.JinjaMaxOutput.Override(10_000_000);
        Assert.Equal(5_000_000, RenderTemplate("{{ 'x' * 5000000 }}").Length);
    }

    static string Dataset(string name, string text)
    {
        var path = Path.Combine(TestPaths.TempDir(), name);
        File.WriteAllText(path, text);
        return path;
    }

    [Theory]
    [InlineData("{\"conversations\": [{\"from\": \"human\", \"value\": \"hi\"}, {\"from\": 1, \"value\": \"x\"}]}", "a message's role must be a string (found 1)")]
    [InlineData("{\"input_ids\": [1, 2, 999999]}", "'input_ids'[2] is 999999; expected a token id in [0, 320)")]
    [InlineData("{\"input_ids\": [1, -5]}", "'input_ids'[1] is -5")]
    [InlineData("{\"input_ids\": [1, 2], \"labels\": [-100, 400]}", "'labels'[1] is 400; expected a token id in [0, 320) or -100")]
    [InlineData("{\"input_ids\": [1, 2.5]}", "field 'input_ids' must be a list of integers (item 1 is 2.5)")]
    [InlineData("{\"input_ids\": [1, 2], \"label\": 1.5}", "label 1.5 is not an integer class id")]
    public void Bad_record_names_file_and_line(string second, string expected)
    {
        var first = second.Contains("conversations")
            ? "{\"conversations\": [{\"from\": \"human\", \"value\": \"hi\"}, {\"from\": \"gpt\", \"value\": \"yo\"}]}"
            : "{\"input_ids\": [1, 2, 3]}";
        var path = Dataset("d.jsonl", first + "\n" + second + "\n");
        var options = new DataOptions { VocabSize = 320, Format = DatasetFormat.Tokenized };
        var e = Assert.ThrowsAny<PeftSharpException>(() =>
        {
            if (second.Contains("conversations"))
                foreach (var r in DatasetReader.Read(path)) DatasetFormats.ToConversation(r, DatasetFormat.ShareGpt, DatasetAttr.PlainFile);
            else DatasetBuilder.Load(path, null, options);
        });
        Assert.Contains($"{path}:2: {expected}", e.Message);
    }

    [Fact]
    public void Json_array_dataset_loads_in_time_linear_in_its_size()
    {
        var sb = new StringBuilder("[\n");
        for (int i = 0; i < 20_000; i++) sb.Append(i == 0 ? "" : ",\n").Append("{\"input_ids\": [1, 2, 3, 4, 5, 6, 7, 8]}");
        sb.Append("\n]\n");
        var path = Dataset("big.json", sb.ToString());
        var sw = Stopwatch.StartNew();
        var records = DatasetReader.Read(path);
        Assert.Equal(20_000, records.Count);
        Assert.Equal(20_001, records[^1].Line);
        Assert.True(sw.ElapsedMilliseconds < 5_000, $"20k records took {sw.ElapsedMilliseconds} ms");
    }
}

/// <summary>tokenizer.json regexes from a hostile file: linear (non-backtracking) where possible, else a timeout.</summary>
public class TokenizerRegexLimitTests
{
    static PeftSharp.Tokenization.HfTokenizer WithRegex(string section, string json)
    {
        var dir = TestPaths.TempDir();
        foreach (var f in Directory.GetFiles(TestPaths.Data("tokenizers", "qwen3"))) File.Copy(f, Path.Combine(dir, Path.GetFileName(f)));
        var path = Path.Combine(dir, "tokenizer.json");
        var root = JsonNode.Parse(File.ReadAllText(path))!.AsObject();
        root[section] = JsonNode.Parse(json);
        File.WriteAllText(path, root.ToJsonString());
        return PeftSharp.Tokenization.HfTokenizer.FromFolder(dir);
    }

    [Fact]
    public void Catastrophic_split_pattern_runs_in_linear_time_with_the_same_split()
    {
        var tok = WithRegex("pre_tokenizer", """{"type": "Split", "pattern": {"Regex": "(a+)+$"}, "behavior": "Isolated", "invert": false}""");
        var sw = Stopwatch.StartNew();
        var ids = tok.Encode(new string('a', 5000) + "!", addSpecialTokens: false);
        Assert.NotEmpty(ids);
        Assert.True(sw.ElapsedMilliseconds < 5000, $"{sw.ElapsedMilliseconds} ms");
    }

    [Fact]
    public void Catastrophic_pattern_that_needs_backtracking_times_out_with_a_named_limit()
    {
        using var _ = ResourceLimits.RegexTimeoutMs.Override(200);
        var tok = WithRegex("normalizer", """{"type": "Replace", "pattern": {"Regex": "(a+)+(?=b)"}, "content": "x"}""");
        var e = Assert.Throws<PeftLimitException>(() => tok.Encode(new string('a', 40) + "c", addSpecialTokens: false));
        Assert.Contains("PEFTSHARP_REGEX_TIMEOUT_MS", e.Message);
    }

    [Fact]
    public void Invalid_pattern_names_the_file()
    {
        var e = Assert.Throws<PeftFormatException>(() => WithRegex("pre_tokenizer", """{"type": "Split", "pattern": {"Regex": "(unclosed"}, "behavior": "Isolated", "invert": false}"""));
        Assert.Contains("tokenizer.json", e.Message);
        Assert.Contains("invalid regex", e.Message);
    }

    [Fact]
    public void Prompt_over_the_byte_limit_is_refused_before_tokenizing()
    {
        var tok = PeftSharp.Tokenization.HfTokenizer.FromFolder(TestPaths.Data("tokenizers", "gpt2"));
        var e = Assert.Throws<PeftLimitException>(() => tok.Encode(new string('x', 4 << 20)));
        Assert.Contains("PEFTSHARP_MAX_PROMPT_BYTES", e.Message);
    }
}
