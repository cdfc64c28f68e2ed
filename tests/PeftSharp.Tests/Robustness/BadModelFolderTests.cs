using System.Buffers.Binary;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using PeftSharp.Tests.Cli;

namespace PeftSharp.Tests.Robustness;

/// <summary>The bad model folders, run through the CLI: one error line naming the file, the key and what was expected.</summary>
public class BadModelFolderTests
{
    static string CopyWithConfig(string key, string json)
    {
        var dir = TestPaths.TempDir();
        foreach (var f in Directory.GetFiles(TestPaths.Model("llama-tiny"))) File.Copy(f, Path.Combine(dir, Path.GetFileName(f)));
        var raw = (JsonObject)JsonNode.Parse(File.ReadAllText(Path.Combine(dir, "config.json")))!;
        raw[key] = JsonNode.Parse(json);
        File.WriteAllText(Path.Combine(dir, "config.json"), raw.ToJsonString());
        return dir;
    }

    static string Generate(string dir)
    {
        var (code, stdout, stderr) = CliRunner.Run("generate", "--model", dir, "--input-ids", "1 2 3", "--max-new-tokens", "2");
        Assert.Equal(1, code);
        Assert.Equal("", stdout);
        var lines = stderr.Split('\n', StringSplitOptions.RemoveEmptyEntries);
        Assert.Single(lines);
        Assert.StartsWith("error: ", lines[0]);
        Assert.DoesNotContain("   at ", stderr);
        return lines[0];
    }

    [Theory]
    [InlineData("model_type", "5", "'model_type' must be a string")]
    [InlineData("num_key_value_heads", "0", "'num_key_value_heads' must be a positive integer (found 0)")]
    [InlineData("num_key_value_heads", "3", "num_attention_heads 4 is not a multiple of num_key_value_heads 3")]
    [InlineData("head_dim", "-16", "'head_dim' must be a positive integer (found -16)")]
    [InlineData("rope_theta", "-1", "'rope_theta' must be a positive number (found -1)")]
    [InlineData("rms_norm_eps", "-1", "'rms_norm_eps' must be a positive number (found -1)")]
    [InlineData("num_hidden_layers", "1000000000", "'num_hidden_layers' 1000000000 is larger than any supported model")]
    [InlineData("num_hidden_layers", "1e9", "'num_hidden_layers' has the wrong type or is out of range (found 1e9; expected an integer")]
    [InlineData("num_hidden_layers", "2000", "the config describes at least")]
    [InlineData("hidden_size", "\"big\"", "'hidden_size' has the wrong type")]
    [InlineData("eos_token_id", "\"x\"", "'eos_token_id' must be an integer or a list of integers")]
    [InlineData("vocab_size", "0", "'vocab_size' must be a positive integer")]
    public void Config_value_out_of_range_is_one_clear_line(string key, string json, string expected)
    {
        var dir = CopyWithConfig(key, json);
        var line = Generate(dir);
        Assert.Contains(Path.Combine(dir, "config.json"), line);
        Assert.Contains(expected, line);
    }

    [Fact]
    public void Header_length_off_by_one_is_refused_instead_of_reading_shifted_tensors()
    {
        // A header padded with spaces (as the safetensors writer aligns it) declared one byte short still parses as JSON;
        // every tensor would then be read one byte out of line. The data section no longer matches the tensors' sizes.
        var dir = TestPaths.TempDir();
        foreach (var f in Directory.GetFiles(TestPaths.Model("llama-tiny"))) File.Copy(f, Path.Combine(dir, Path.GetFileName(f)));
        var path = Path.Combine(dir, "model.safetensors");
        var bytes = File.ReadAllBytes(path);
        long n = BinaryPrimitives.ReadInt64LittleEndian(bytes);
        var header = Encoding.UTF8.GetString(bytes, 8, (int)n).TrimEnd() + "        ";
        var data = bytes[(8 + (int)n)..];
        var h = Encoding.UTF8.GetBytes(header);
        var outBytes = new byte[8 + h.Length + data.Length];
        BinaryPrimitives.WriteInt64LittleEndian(outBytes, h.Length - 1);
        h.CopyTo(outBytes, 8);
        data.CopyTo(outBytes, 8 + h.Length);
        File.WriteAllBytes(path, outBytes);
        var line = Generate(dir);
        Assert.Contains(path, line);
        Assert.Contains("the tensors cover", line);
    }

    [Fact]
    public void F32_relabelled_I32_is_refused()
    {
        var dir = TestPaths.TempDir();
        foreach (var f in Directory.GetFiles(TestPaths.Model("llama-tiny"))) File.Copy(f, Path.Combine(dir, Path.GetFileName(f)));
        var path = Path.Combine(dir, "model.safetensors");
        var bytes = File.ReadAllBytes(path);
        long n = BinaryPrimitives.ReadInt64LittleEndian(bytes);
        var header = Encoding.UTF8.GetString(bytes, 8, (int)n).Replace("\"F32\"", "\"I32\"");
        Assert.Equal(n, Encoding.UTF8.GetByteCount(header));
        Encoding.UTF8.GetBytes(header).CopyTo(bytes, 8);
        File.WriteAllBytes(path, bytes);
        var line = Generate(dir);
        Assert.Contains("checkpoint dtype I32, model Float32", line);
    }

    [Fact]
    public void Unexpected_exception_is_reported_as_a_bug_in_one_line_and_the_trace_under_verbose()
    {
        var (code, text) = PeftSharp.Cli.ErrorReporter.Classify(new NullReferenceException("boom"));
        Assert.Equal(PeftSharp.Cli.ErrorReporter.InternalError, code);
        Assert.Contains("internal error, this is a bug in PeftSharp (NullReferenceException: boom)", text);
        var w = new StringWriter();
        Exception thrown;
        try { throw new InvalidOperationException("bad state"); } catch (Exception e) { thrown = e; }
        Assert.Equal(70, PeftSharp.Cli.ErrorReporter.Report(thrown, w, verbose: true));
        Assert.Contains("   at ", w.ToString());
        var quiet = new StringWriter();
        PeftSharp.Cli.ErrorReporter.Report(thrown, quiet, verbose: false);
        Assert.Single(quiet.ToString().Split('\n', StringSplitOptions.RemoveEmptyEntries));
    }

    [Fact]
    public void Verbose_shows_the_trace_of_a_user_error()
    {
        var dir = CopyWithConfig("rope_theta", "-1");
        var (code, _, stderr) = CliRunner.Run("generate", "--model", dir, "--input-ids", "1 2", "--verbose");
        Assert.Equal(1, code);
        Assert.StartsWith("error: ", stderr);
        Assert.Contains("   at ", stderr);
    }
}
