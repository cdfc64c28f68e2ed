using System.Text;
using CsCheck;
using PeftSharp.Training;

namespace PeftSharp.Tests.Fuzz;

/// <summary>Generated and mutated training YAML: parsed, or refused with a PeftSharp error; alias bombs and deep nesting bounded.</summary>
public class YamlFuzzTests
{
    static readonly string[] Scalars = ["1", "0", "-3", "1.5", "1e-4", "true", "no", "null", "~", "q_proj", "'x'", "\"a: b\"", "all", "[]", "{}", "&a 5", "*a", "*missing", "|\n  text", "1e400", "!!binary aGk="];

    static string Value(Random rng, int depth)
    {
        int kind = rng.Next(depth > 3 ? 1 : 5);
        return kind switch
        {
            0 => Scalars[rng.Next(Scalars.Length)],
            1 => "[" + string.Join(", ", Enumerable.Range(0, rng.Next(4)).Select(_ => Value(rng, depth + 1))) + "]",
            2 => "{" + string.Join(", ", Enumerable.Range(0, rng.Next(3)).Select(i => $"k{i}: {Value(rng, depth + 1)}")) + "}",
            3 => $"&n{rng.Next(3)} [{Value(rng, depth + 1)}, {Value(rng, depth + 1)}]",
            _ => $"*n{rng.Next(3)}",
        };
    }

    // Found by the fuzzer in CI: YamlDotNet throws ArgumentException for an alias where a mapping key belongs, and for a tag that is no URI.
    [Theory]
    [InlineData("save_steps: &s 5\neval_steps: *s|eval_steps: *s\n: x\n")]
    [InlineData("*s: 1\n")]
    // Found by the soak (seed 6kUG2KYr4rM1): a tag that is not a URI made YamlDotNet throw ArgumentException.
    [InlineData("is_parallel: [{k0: !!]inary aGk=}]\n")]
    public void Aliases_and_tags_YamlDotNet_rejects_with_other_exceptions_are_refused_naming_the_file(string tail)
    {
        var e = Assert.ThrowsAny<PeftSharpException>(() => TrainConfig.Parse("model_name_or_path: m\ndataset: d\n" + tail, "alias.yaml"));
        Assert.Contains("alias.yaml", e.Message);
    }

    // Found by the soak as "Test Run Aborted" (stack overflow): YamlDotNet resolves an alias to a later anchor at the end
    // of the document, so two anchored lists that name each other became a cycle that walking the tree never left.
    [Theory]
    [InlineData("lora_target: &n0 [*n1]\nadapter_config: &n1 [*n0]\n")]
    [InlineData("lora_target: [*n2, &n2 [q_proj]]\n")]
    [InlineData("leave_out: &a [&b [*c], &c [*b]]\n")]
    public void An_alias_to_a_later_anchor_is_refused_instead_of_building_a_cycle(string tail)
    {
        var e = Assert.Throws<PeftFormatException>(() => TrainConfig.Parse("model_name_or_path: m\ndataset: d\n" + tail, "forward.yaml"));
        Assert.Contains("forward.yaml:", e.Message);
        Assert.Contains("no earlier anchor", e.Message);
    }

    // Found by the soak (seed 5ZvtrhIuyO41): a block scalar's line break split the error into two lines.
    [Theory]
    [InlineData("lr_scheduler_type: |\n  text\n")]
    [InlineData("finetuning_type: |\n  lo\n  ra\n")]
    public void A_multi_line_value_in_an_error_stays_on_one_line(string tail)
    {
        var e = Assert.ThrowsAny<PeftSharpException>(() => TrainConfig.Parse("model_name_or_path: m\ndataset: d\n" + tail, "fuzz.yaml"));
        Assert.Contains("fuzz.yaml", e.Message);
        Assert.DoesNotContain('\n', e.Message);
        Assert.Contains("\\n", e.Message);
    }

    // Found by CI's draw (seed 1DzfonMm4fD1): 1e400 became an infinite JSON number, which crashed the error message that printed it.
    [Theory]
    [InlineData("use_dora: 1e400\n", "use_dora")]
    [InlineData("learning_rate: 1e400\n", "learning_rate")]
    [InlineData("lora_alpha: -1e400\n", "lora_alpha")]
    [InlineData("lora_dropout: 1e400\n", "lora_dropout")]
    public void An_infinite_number_is_refused_naming_the_file_and_key(string tail, string key)
    {
        var e = Assert.ThrowsAny<PeftSharpException>(() => TrainConfig.Parse("model_name_or_path: m\ndataset: d\n" + tail, "inf.yaml"));
        Assert.Contains("inf.yaml", e.Message);
        Assert.Contains(key, e.Message);
    }

    [Fact]
    public void Generated_yaml_parses_or_is_refused_clearly()
    {
        var keys = TrainConfig.ValidKeys.ToArray();
        var h = new FuzzHarness("yaml", TimeSpan.FromSeconds(3));
        Gen.Select(Gen.Int, Gen.Int[1, 8]).Fuzz((seed, lines) =>
        {
            var rng = new Random(seed);
            var yaml = new StringBuilder("model_name_or_path: m\ndataset: d\n");
            string[] good = ["learning_rate: 1.0e-4", "lora_rank: 8", "lora_target: [q_proj, v_proj]", "max_steps: 10", "cutoff_len: 256",
                "save_steps: &s 5", "eval_steps: *s", "bf16: true", "output_dir: out", "lora_dropout: 0.05", "seed: 3", "plot_loss: false"];
            for (int i = 0; i < lines; i++)
                if (rng.Next(2) == 0) yaml.Append(good[rng.Next(good.Length)]).Append('\n');
                else yaml.Append(rng.Next(10) == 0 ? $"unknown_{i}" : keys[rng.Next(keys.Length)]).Append(": ").Append(Value(rng, 0)).Append('\n');
            var text = yaml.ToString();
            if (rng.Next(4) == 0)
            {
                var chars = text.ToCharArray();
                const string special = ":[]{}&*!|>-'\"#\t\n";
                chars[rng.Next(chars.Length)] = special[rng.Next(special.Length)];
                text = new string(chars);
            }
            h.Case(text, "fuzz.yaml", () => TrainConfig.Parse(text, "fuzz.yaml"));
        }, iter: FuzzHarness.Iter(400));

        // Alias bombs of growing fan-out and depth, and nesting far past the limit.
        Gen.Select(Gen.Int[2, 12], Gen.Int[2, 12]).Fuzz((fan, levels) =>
        {
            var yaml = new StringBuilder("model_name_or_path: m\ndataset: d\nadapter_config: &a0 [x]\n");
            for (int i = 1; i <= levels; i++) yaml.Append($"leave_out: &a{i} [{string.Join(", ", Enumerable.Repeat($"*a{i - 1}", fan))}]\n");
            h.Case($"bomb {fan}^{levels}", "bomb.yaml", () => TrainConfig.Parse(yaml.ToString(), "bomb.yaml"));
        }, iter: FuzzHarness.Iter(40));
        Gen.Int[1, 3000].Fuzz(depth =>
            h.Case($"depth {depth}", "deep.yaml", () => TrainConfig.Parse($"model_name_or_path: m\ndataset: d\nlora_target: {new string('[', depth)}q{new string(']', depth)}\n", "deep.yaml")),
            iter: FuzzHarness.Iter(30));
        h.Report(minRejected: 100);
    }
}
