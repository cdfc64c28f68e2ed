using PeftSharp.IO;
using PeftSharp.Tests.Tuners.AdapterHub;
using PeftSharp.Tuners.Bottleneck;
using static TorchSharp.torch;

namespace PeftSharp.Tests.Cli;

/// <summary>--compose / --fusion on peft forward and generate reproduce AdapterHub's logits for the fixture compositions.</summary>
public class ComposeCliTests
{
    static string Rows(Tensor t) => string.Join(";", Enumerable.Range(0, (int)t.shape[0]).Select(r => string.Join(" ", t[r].data<long>().ToArray())));

    [Theory]
    [InlineData("fuse", "Fuse[a, b]", true)]
    [InlineData("stack", "stack[a,b]", false)]
    public void Forward_with_a_composition_matches_adapterhub(string name, string compose, bool fusion)
    {
        var dir = AdapterHubFixtureTests.Case("llama-tiny", name);
        var inputs = AdapterHubFixtureTests.Inputs("llama-tiny");
        var output = Path.Combine(TestPaths.TempDir(), "logits.safetensors");
        var args = new List<string> { "forward", "--model", TestPaths.Model("llama-tiny"), "--input-ids", Rows(inputs.InputIds!),
            "--attention-mask", Rows(inputs.AttentionMask!), "--adapter", $"a={Path.Combine(dir, "a")}", "--adapter", $"b={Path.Combine(dir, "b")}",
            "--compose", compose, "--output", output, "--json" };
        if (fusion) args.AddRange(new[] { "--fusion", Path.Combine(dir, "fusion") });
        var (code, _, err) = CliRunner.Run(args.ToArray());
        Assert.True(code == 0, err);
        using var got = SafetensorsFile.Open(output);
        using var want = SafetensorsFile.Open(Path.Combine(dir, "expected.safetensors"));
        FixtureAssert.Close(got.Load("logits"), want.Load("logits"), inputs.AttentionMask, 1e-4, $"{name} via --compose");

        var (gcode, gout, gerr) = CliRunner.Run(new[] { "generate", "--model", TestPaths.Model("llama-tiny"), "--input-ids", "1 5 9",
            "--adapter", $"a={Path.Combine(dir, "a")}", "--adapter", $"b={Path.Combine(dir, "b")}", "--compose", compose, "--max-new-tokens", "3", "--json" }
            .Concat(fusion ? new[] { "--fusion", Path.Combine(dir, "fusion") } : Array.Empty<string>()).ToArray());
        Assert.True(gcode == 0, gerr);
        Assert.Contains("new_ids", gout);
    }

    [Theory]
    [InlineData("Stack[a,b", "expected ',' or ']'")]
    [InlineData("Gate[a,b]", "'Gate' is not a composition block")]
    [InlineData("Fuse[a,Stack[b,c]]", "Fuse takes adapter names only")]
    [InlineData("a b", "unexpected text")]
    [InlineData("Parallel[Fuse[a,b]]", "cannot nest Fuse inside Parallel")]
    public void Bad_compositions_are_one_clear_error(string text, string expected)
    {
        var e = Assert.Throws<PeftConfigException>(() => PeftSharp.Tuners.AdapterComposition.Parse(text));
        Assert.Contains(expected, e.Message);
        Assert.Contains(text, e.Message);
    }

    [Fact]
    public void Parsing_builds_nested_blocks()
    {
        var c = PeftSharp.Tuners.AdapterComposition.Parse("Stack[x, Parallel[a, b]]");
        Assert.Equal(Composition.Kind.Stack, c.Type);
        Assert.Equal(Composition.Kind.Parallel, c.Children[1].Type);
        Assert.Equal(new[] { "x", "a", "b" }, c.Flatten());
    }
}
