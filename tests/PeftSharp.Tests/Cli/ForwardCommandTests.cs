using System.Text.Json;
using PeftSharp.IO;
using static TorchSharp.torch;

namespace PeftSharp.Tests.Cli;

public class ForwardCommandTests
{
    static (int Code, string Out, string Err) Run(params string[] args) => PeftSharp.Tests.Cli.CliRunner.Run(args);

    /// <summary>"1 2 3;4 5 6" from a [batch, seq] integer tensor.</summary>
    static string Rows(Tensor t)
    {
        var v = t.to(ScalarType.Int64).data<long>().ToArray();
        long seq = t.shape[1];
        return string.Join(";", Enumerable.Range(0, (int)t.shape[0]).Select(r => string.Join(" ", v.Skip(r * (int)seq).Take((int)seq))));
    }

    /// <summary>The fixture's inputs through the CLI; the written logits equal cases.safetensors where the mask is 1.</summary>
    [Theory]
    [InlineData("llama-tiny")]
    [InlineData("llama-tiny-rope")]
    [InlineData("qwen2-tiny")]
    [InlineData("mistral-tiny")]
    [InlineData("gpt2-tiny")]
    [InlineData("bert-tiny-cls")]
    public void Forward_writes_the_fixture_logits(string name)
    {
        using var scope = NewDisposeScope();
        var dir = TestPaths.Model(name);
        using var cases = SafetensorsFile.Open(Path.Combine(dir, "cases.safetensors"));
        var ids = cases.Load("input_ids");
        var mask = cases.Load("attention_mask");
        var args = new List<string> { "forward", "--model", dir, "--input-ids", Rows(ids), "--attention-mask", Rows(mask) };
        if (cases.Contains("token_type_ids")) args.AddRange(new[] { "--token-type-ids", Rows(cases.Load("token_type_ids")) });
        var outPath = Path.Combine(TestPaths.TempDir(), "out.safetensors");
        args.AddRange(new[] { "--output", outPath });

        var (code, stdout, stderr) = Run(args.ToArray());
        Assert.True(code == 0, stderr);
        Assert.Contains(outPath, stdout);
        using var written = SafetensorsFile.Open(outPath);
        var logits = written.Load("logits");
        // LM logits are compared where the mask is 1; class logits ([batch, labels]) everywhere.
        FixtureAssert.Close(logits, cases.Load("logits"), logits.dim() == 3 ? mask : null, 1e-4, $"{name} CLI logits");
        Assert.Equal(ids.data<long>().ToArray(), written.Load("input_ids").data<long>().ToArray());
        Assert.Equal(mask.data<long>().ToArray(), written.Load("attention_mask").data<long>().ToArray());
    }

    [Fact]
    public void Json_output_gives_path_shape_and_numbers()
    {
        using var scope = NewDisposeScope();
        var outPath = Path.Combine(TestPaths.TempDir(), "o.safetensors");
        var (code, stdout, stderr) = Run("forward", "--model", TestPaths.Model("llama-tiny"), "--input-ids", "1 2 3;4 5 6", "--output", outPath, "--json");
        Assert.True(code == 0, stderr);
        using var doc = JsonDocument.Parse(stdout);
        var root = doc.RootElement;
        Assert.Equal(Path.GetFullPath(outPath), root.GetProperty("output").GetString());
        Assert.Equal(new long[] { 2, 3, 320 }, root.GetProperty("shape").EnumerateArray().Select(x => x.GetInt64()));
        Assert.Equal("F32", root.GetProperty("dtype").GetString());
        using var written = SafetensorsFile.Open(outPath);
        var logits = written.Load("logits");
        var first = root.GetProperty("first").EnumerateArray().Select(x => x.GetDouble()).ToArray();
        Assert.Equal(5, first.Length);
        Assert.Equal(logits.view(-1).narrow(0, 0, 5).to(ScalarType.Float64).data<double>().ToArray(), first);
        Assert.Equal(logits.abs().mean().item<float>(), root.GetProperty("mean_abs").GetDouble(), 1e-5);
        // No mask given: the written mask is all ones.
        Assert.True(written.Load("attention_mask").eq(1).all().item<bool>());
    }

    [Fact]
    public void Bf16_forward_is_close_to_fp32()
    {
        using var scope = NewDisposeScope();
        var dir = TestPaths.TempDir();
        string a = Path.Combine(dir, "a.safetensors"), b = Path.Combine(dir, "b.safetensors");
        var model = TestPaths.Model("llama-tiny");
        Assert.Equal(0, Run("forward", "--model", model, "--input-ids", "5 6 7 8", "--output", a).Code);
        Assert.Equal(0, Run("forward", "--model", model, "--input-ids", "5 6 7 8", "--output", b, "--dtype", "bf16").Code);
        using var fa = SafetensorsFile.Open(a);
        using var fb = SafetensorsFile.Open(b);
        Assert.Equal("BF16", fb.Entry("logits").DType);
        var d = FixtureAssert.MaxAbsDiff(fb.Load("logits", dtype: ScalarType.Float32), fa.Load("logits"));
        Assert.InRange(d, 1e-6, 0.1);
    }

    public static TheoryData<string[], string> BadArguments => new()
    {
        { new[] { "forward", "--input-ids", "1 2", "--output", "x.safetensors" }, "--model" },
        { new[] { "forward", "--model", "M", "--input-ids", "1 two 3", "--output", "x.safetensors" }, "--input-ids: 'two' in row 0 is not an integer" },
        { new[] { "forward", "--model", "M", "--input-ids", "1 2 3;4 5", "--output", "x.safetensors" }, "rows have different lengths (3, 2)" },
        { new[] { "forward", "--model", "M", "--input-ids", "1 2;3 4", "--attention-mask", "1 1", "--output", "x.safetensors" }, "--attention-mask must have the shape of --input-ids [2, 2]" },
        { new[] { "forward", "--model", "M", "--input-ids", "1 2", "--attention-mask", "1 2", "--output", "x.safetensors" }, "--attention-mask: 2 is not 0 or 1" },
        { new[] { "forward", "--model", "M", "--input-ids", "1 320", "--output", "x.safetensors" }, "--input-ids: 320 is outside the vocabulary [0, 320)" },
        { new[] { "forward", "--model", "M", "--input-ids", "-1 3", "--output", "x.safetensors" }, "--input-ids: -1 is outside the vocabulary" },
        { new[] { "forward", "--model", "M", "--input-ids", "1 2", "--output", "x.safetensors", "--dtype", "float8" }, "--dtype 'float8' is not supported" },
        { new[] { "forward", "--model", "/nonexistent/model/dir", "--input-ids", "1 2", "--output", "x.safetensors" }, "/nonexistent/model/dir: model folder not found" },
    };

    [Theory]
    [MemberData(nameof(BadArguments))]
    public void Bad_arguments_give_a_nonzero_exit_and_a_one_line_error(string[] args, string fragment)
    {
        var outDir = TestPaths.TempDir();
        args = args.Select(a => a == "M" ? TestPaths.Model("llama-tiny") : a == "x.safetensors" ? Path.Combine(outDir, a) : a).ToArray();
        var (code, stdout, stderr) = Run(args);
        Assert.NotEqual(0, code);
        var lines = stderr.Split('\n', StringSplitOptions.RemoveEmptyEntries);
        Assert.StartsWith("error: ", lines[0]);
        Assert.Contains(fragment, lines[0]);
        Assert.DoesNotContain("   at ", stderr);
        // Parse errors add a usage hint; handler errors are exactly one line.
        Assert.True(lines.Length <= 2 && (lines.Length == 1 || lines[1].Contains("--help")), stderr);
        Assert.Equal("", stdout);
        Assert.Empty(Directory.GetFiles(outDir));
    }

    [Fact]
    public void Verbose_adds_the_stack_trace()
    {
        var (code, _, stderr) = Run("forward", "--model", "/nonexistent/model/dir", "--input-ids", "1 2", "--output", Path.Combine(TestPaths.TempDir(), "x.safetensors"), "--verbose");
        Assert.Equal(1, code);
        Assert.StartsWith("error: /nonexistent/model/dir: model folder not found", stderr);
        Assert.Contains("PeftSharp.PeftFormatException", stderr);
        Assert.Contains("   at ", stderr);
    }
}

public class ForwardWithAdaptersTests
{
    static string Multi(params string[] p) => TestPaths.Data(new[] { "multi", "llama-tiny" }.Concat(p).ToArray());

    static string Rows(Tensor t) => string.Join(";", Enumerable.Range(0, (int)t.shape[0]).Select(r => string.Join(' ', t[r].data<long>().ToArray())));

    [Fact]
    public void Mixed_adapter_batch_in_one_forward_equals_peft()
    {
        using var scope = NewDisposeScope();
        using var cases = SafetensorsFile.Open(Path.Combine(TestPaths.Model("llama-tiny"), "cases.safetensors"));
        var mask = cases.Load("attention_mask");
        var outPath = Path.Combine(TestPaths.TempDir(), "mixed.safetensors");
        var (code, _, err) = CliRunner.Run("forward", "--model", TestPaths.Model("llama-tiny"),
            "--input-ids", Rows(cases.Load("input_ids")), "--attention-mask", Rows(mask),
            "--adapter", "a=" + Multi("a"), "--adapter", "b=" + Multi("b"), "--adapter-per-row", "a,b,__base__", "--output", outPath);
        Assert.True(code == 0, err);
        using var written = SafetensorsFile.Open(outPath);
        using var expected = SafetensorsFile.Open(Multi("expected.safetensors"));
        FixtureAssert.Close(written.Load("logits"), expected.Load("mixed_logits"), mask, 1e-4, "mixed batch");
    }

    [Fact]
    public void Single_adapter_folder_becomes_the_active_adapter()
    {
        using var scope = NewDisposeScope();
        using var cases = SafetensorsFile.Open(Path.Combine(TestPaths.Model("llama-tiny"), "cases.safetensors"));
        var mask = cases.Load("attention_mask");
        var outPath = Path.Combine(TestPaths.TempDir(), "b.safetensors");
        var (code, _, err) = CliRunner.Run("forward", "--model", TestPaths.Model("llama-tiny"),
            "--input-ids", Rows(cases.Load("input_ids")), "--attention-mask", Rows(mask), "--adapter", Multi("b"), "--output", outPath);
        Assert.True(code == 0, err);
        using var written = SafetensorsFile.Open(outPath);
        using var expected = SafetensorsFile.Open(Multi("expected.safetensors"));
        FixtureAssert.Close(written.Load("logits"), expected.Load("logits_b"), mask, 1e-4, "adapter b");
    }

    [Fact]
    public void Per_row_names_must_match_rows_and_exist()
    {
        var outPath = Path.Combine(TestPaths.TempDir(), "x.safetensors");
        var (c1, _, e1) = CliRunner.Run("forward", "--model", TestPaths.Model("llama-tiny"), "--input-ids", "1 2;3 4",
            "--adapter", "a=" + Multi("a"), "--adapter-per-row", "a", "--output", outPath);
        Assert.Equal(1, c1);
        Assert.Contains("2 rows", e1);
        var (c2, _, e2) = CliRunner.Run("forward", "--model", TestPaths.Model("llama-tiny"), "--input-ids", "1 2;3 4",
            "--adapter", "a=" + Multi("a"), "--adapter-per-row", "a,zzz", "--output", outPath);
        Assert.Equal(1, c2);
        Assert.Contains("zzz", e2);
    }
}
