using System.Text.Json;

namespace PeftSharp.Tests.Quantization;

public class QuantizeCommandTests
{
    static (int Code, string Out, string Err) Run(params string[] args) => PeftSharp.Tests.Cli.CliRunner.Run(args);

    [Fact]
    public void Quantize_writes_the_bitsandbytes_checkpoint_and_info_reports_it()
    {
        var dst = Path.Combine(TestPaths.TempDir(), "nf4");
        var (code, stdout, stderr) = Run("quantize", "--model", TestPaths.Model("llama-tiny"), "--out", dst, "--quant-type", "nf4", "--double-quant", "--json");
        Assert.True(code == 0, stderr);
        using var doc = JsonDocument.Parse(stdout);
        Assert.Equal(14, doc.RootElement.GetProperty("quantized_layers").GetInt32());
        // 4 bits + 8-bit absmax per 64 + per layer: nested absmax, code books (16 + 256 floats) and ~166 B of JSON.
        // On this model's 4k-16k-parameter layers that per-layer overhead adds ~1.9 bits: 6.037 measured from the fixture file.
        var file = TestPaths.Data("quant", "llama-tiny-nf4-dq", "model.safetensors");
        using (var f = PeftSharp.IO.SafetensorsFile.Open(file))
        {
            var quantKeys = f.Entries.Values.Where(e => e.Name.Contains("_proj.weight")).ToList();
            long quantBytes = quantKeys.Sum(e => e.ByteLength);
            long quantParams = quantKeys.Where(e => e.Name.EndsWith("_proj.weight")).Sum(e => e.NumElements * 2);
            Assert.Equal(8.0 * quantBytes / quantParams, doc.RootElement.GetProperty("bits_per_parameter").GetDouble(), 9);
        }
        Assert.Equal(File.ReadAllBytes(TestPaths.Data("quant", "llama-tiny-nf4-dq", "model.safetensors")), File.ReadAllBytes(Path.Combine(dst, "model.safetensors")));
        Assert.True(File.Exists(Path.Combine(dst, "generation_config.json")));

        (code, stdout, stderr) = Run("info", "--model", dst);
        Assert.True(code == 0, stderr);
        Assert.Contains("quantization  bitsandbytes 4-bit nf4 + double quant, 14 linear layers, compute float32", stdout);

        (code, _, stderr) = Run("quantize", "--model", dst, "--out", dst + "-again");
        Assert.Equal(1, code);
        Assert.Contains("already quantized", stderr);
    }

    [Fact]
    public void Bad_options_give_one_line_errors()
    {
        var dst = Path.Combine(TestPaths.TempDir(), "x");
        var (code, _, stderr) = Run("quantize", "--model", TestPaths.Model("llama-tiny"), "--out", dst, "--quant-type", "int4");
        Assert.Equal(1, code);
        Assert.Contains("int4", stderr);
        (code, _, stderr) = Run("quantize", "--model", TestPaths.Model("llama-tiny"), "--out", dst, "--blocksize", "48");
        Assert.Equal(1, code);
        Assert.Contains("blocksize 48", stderr);
        Assert.False(Directory.Exists(dst));
    }
}
