using System.Text;
using PeftSharp.IO;
using PeftSharp.Quantization;
using TorchSharp;
using static TorchSharp.torch;

namespace PeftSharp.Tests.Quantization;

/// <summary>Function-level bit-exactness against bitsandbytes' quantize_4bit / dequantize_4bit (TestData/quant).</summary>
public class Bnb4bitTests
{
    public static TheoryData<string, string, bool> Cases()
    {
        var d = new TheoryData<string, string, bool>();
        foreach (var f in new[] { "w_64x64", "w_256x128", "w_odd_5x13", "spec_block", "edge_block" })
            foreach (var qt in new[] { "nf4", "fp4" })
                foreach (var dq in new[] { false, true })
                    d.Add(f, qt, dq);
        return d;
    }

    static byte[] Bytes(Tensor t) => t.contiguous().bytes.ToArray();

    static void SameBits(Tensor expected, Tensor actual, string what)
    {
        Assert.Equal(expected.dtype, actual.dtype);
        Assert.Equal(expected.shape, actual.shape);
        var e = Bytes(expected); var a = Bytes(actual);
        int first = Enumerable.Range(0, e.Length).FirstOrDefault(i => e[i] != a[i], -1);
        Assert.True(first < 0, $"{what}: first differing byte at {first} of {e.Length}");
    }

    [Theory]
    [MemberData(nameof(Cases))]
    public void Quantize_and_dequantize_match_bitsandbytes(string file, string qt, bool dq)
    {
        using var scope = NewDisposeScope();
        using var f = SafetensorsFile.Open(TestPaths.Data("quant", file + ".safetensors"));
        var p = $"{qt}.{(dq ? "dq" : "nodq")}";
        var weight = f.Load("weight");
        var (packed, state) = Bnb4bit.Quantize(weight, QuantTypes.Parse(qt), 64, dq);
        using var _ = state;

        SameBits(f.Load($"{p}.packed"), packed, "packed");
        SameBits(f.Load($"{p}.absmax"), state.Absmax, "absmax");
        SameBits(f.Load($"{p}.code"), state.Code, "code");
        if (dq)
        {
            SameBits(f.Load($"{p}.nested_absmax"), state.NestedAbsmax!, "nested_absmax");
            SameBits(f.Load($"{p}.nested_code"), state.NestedCode!, "nested_code");
            Assert.Equal(f.Load($"{p}.offset").item<float>(), state.NestedOffset);
            SameBits(f.Load($"{p}.absmax_dequantized"), state.AbsmaxFloat(), "absmax_dequantized (tensor ops)");
            Assert.Equal(Bytes(f.Load($"{p}.absmax_dequantized")), Bytes(torch.tensor(state.AbsmaxArray())));
        }
        // Serialized QuantState: every tensor and the JSON blob byte for byte.
        foreach (var (suffix, t) in state.StateDictEntries())
            SameBits(f.Load($"{p}.serialized.{suffix}"), t, $"serialized.{suffix}");

        var expected = f.Load($"{p}.dequantized");
        SameBits(expected, Bnb4bit.Dequantize(packed, state), "dequantized (CPU loop)");
        SameBits(expected, Bnb4bit.DequantizeWithTensorOps(packed, state), "dequantized (tensor ops)");
        SameBits(expected.to(ScalarType.BFloat16), Bnb4bit.Dequantize(packed, state, ScalarType.BFloat16), "dequantized bf16 (CPU loop)");
        SameBits(expected.to(ScalarType.BFloat16), Bnb4bit.DequantizeWithTensorOps(packed, state, ScalarType.BFloat16), "dequantized bf16 (tensor ops)");
    }

    [Theory]
    [MemberData(nameof(Cases))]
    public void Stored_state_reads_back(string file, string qt, bool dq)
    {
        using var scope = NewDisposeScope();
        using var f = SafetensorsFile.Open(TestPaths.Data("quant", file + ".safetensors"));
        var p = $"{qt}.{(dq ? "dq" : "nodq")}.serialized.";
        using var state = QuantState.FromStored(file, k => f.Contains(p + k) ? f.Load(p + k) : null);
        var shape = f.Entry("weight").Shape;
        Assert.Equal(shape, state.Shape);
        Assert.Equal(dq, state.Nested);
        Assert.Equal("float32", state.DType);
        var expected = f.Load($"{qt}.{(dq ? "dq" : "nodq")}.dequantized");
        SameBits(expected, Bnb4bit.Dequantize(f.Load($"{qt}.{(dq ? "dq" : "nodq")}.packed"), state), "dequantized from stored state");
    }

    [Theory]
    [InlineData(64, true)]
    [InlineData(128, false)]
    [InlineData(32, true)]
    public void Parallel_cpu_loop_equals_tensor_ops_on_large_odd_weights(int blocksize, bool dq)
    {
        using var scope = NewDisposeScope();
        manual_seed(7);
        var w = randn(301, 1001) * 0.03f; // 301,301 values: many chunks, a partial block, an odd count
        var (packed, state) = Bnb4bit.Quantize(w, QuantType.NF4, blocksize, dq);
        using var _ = state;
        foreach (var dtype in new[] { ScalarType.Float32, ScalarType.BFloat16 })
            SameBits(Bnb4bit.DequantizeWithTensorOps(packed, state, dtype), Bnb4bit.Dequantize(packed, state, dtype), $"{dtype}");
        var err = (Bnb4bit.Dequantize(packed, state) - w).abs().max().item<float>();
        Assert.InRange(err, 1e-4f, 0.03f * 6 * 0.2f);
    }

    [Fact]
    public void Code_books_equal_bitsandbytes()
    {
        using var f = SafetensorsFile.Open(TestPaths.Data("quant", "codebooks.safetensors"));
        Assert.Equal(f.Load("nf4_code").data<float>().ToArray(), CodeBooks.NF4);
        Assert.Equal(f.Load("fp4_code").data<float>().ToArray(), CodeBooks.FP4);
        Assert.Equal(f.Load("dynamic_map_signed").data<float>().ToArray(), CodeBooks.DynamicSigned);
        Assert.Equal(f.Load("dynamic_map_unsigned").data<float>().ToArray(), CodeBooks.DynamicUnsigned);
        Assert.Equal(127, Array.IndexOf(CodeBooks.DynamicSigned, 0f));
    }

    [Fact]
    public void Spec_block_codes_follow_the_spec_table()
    {
        // adapters-quant-spec.md 9.3: x_i = (i - 32) / 16, NF4 packed bytes.
        var x = Enumerable.Range(0, 64).Select(i => (i - 32) / 16f).ToArray();
        var (packed, absmax) = Blockwise.Quantize4bit(x, 64, QuantType.NF4);
        Assert.Equal("00 00 01 11 11 11 12 22 22 33 33 44 45 55 66 67 77 88 99 9a aa bb bc cc cd dd de ee ee ee ff ff",
            string.Join(" ", packed.Select(b => b.ToString("x2"))));
        var (fp4, _) = Blockwise.Quantize4bit(x, 64, QuantType.FP4);
        Assert.Equal("bb bb bb aa aa aa aa dd dd dc cc cf ff ee ee 99 01 16 66 67 77 44 44 55 55 52 22 22 22 23 33 33",
            string.Join(" ", fp4.Select(b => b.ToString("x2"))));
        Assert.Equal(2f, absmax[0]);
    }

    [Fact]
    public void Python_float_repr()
    {
        Assert.Equal("0.2557941675186157", PyJsonProbe(0.2557941675186157));
        Assert.Equal("2.0", PyJsonProbe(2.0));
        Assert.Equal("1e-05", PyJsonProbe(1e-05));
        Assert.Equal("1.5e-05", PyJsonProbe(1.5e-05));
        Assert.Equal("0.0001", PyJsonProbe(0.0001));
        Assert.Equal("1e+16", PyJsonProbe(1e16));
        Assert.Equal("123456789.0", PyJsonProbe(123456789.0));
        Assert.Equal("-0.5", PyJsonProbe(-0.5));
        Assert.Equal("0.0", PyJsonProbe(0.0));
    }

    static string PyJsonProbe(double d) => PyJson.Float(d);

    [Fact]
    public void Bad_blocksize_and_damaged_state_are_reported()
    {
        Assert.Throws<PeftConfigException>(() => Blockwise.Quantize4bit(new float[64], 48, QuantType.NF4));
        using var f = SafetensorsFile.Open(TestPaths.Data("quant", "w_64x64.safetensors"));
        var p = "nf4.dq.serialized.";
        var e = Assert.Throws<PeftFormatException>(() => QuantState.FromStored("w", k => k == "nested_absmax" ? null : f.Contains(p + k) ? f.Load(p + k) : null));
        Assert.Contains("absmax", e.Message);
        var blob = torch.tensor(Encoding.UTF8.GetBytes("{\"quant_type\": \"nf4\"}"), ScalarType.Byte);
        e = Assert.Throws<PeftFormatException>(() => QuantState.FromStored("w", k => k == "quant_state.bitsandbytes__nf4" ? blob : null));
        Assert.Contains("blocksize", e.Message);
    }
}
