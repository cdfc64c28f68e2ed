using System.Buffers.Binary;
using System.Text;
using System.Text.Json;
using PeftSharp.IO;
using TorchSharp;
using static TorchSharp.torch;

namespace PeftSharp.Tests.IO;

public class SafetensorsRoundTripTests
{
    public static TheoryData<string> DTypes => new() { "F64", "F32", "F16", "BF16", "I64", "I32", "I16", "I8", "U8", "BOOL" };

    /// <summary>A tensor whose bytes are random (any bit pattern, NaNs included); BOOL gets 0/1 only.</summary>
    static Tensor RandomBits(string dtype, long[] shape, int seed)
    {
        Assert.True(SafetensorsDType.TryParse(dtype, out var st, out _));
        var t = empty(shape, st);
        var bytes = t.bytes;
        var rng = new Random(seed);
        var buf = new byte[bytes.Length];
        rng.NextBytes(buf);
        if (st == ScalarType.Bool) for (int i = 0; i < buf.Length; i++) buf[i] &= 1;
        buf.CopyTo(bytes);
        return t;
    }

    [Theory]
    [MemberData(nameof(DTypes))]
    public void Every_dtype_round_trips_bit_exact(string dtype)
    {
        using var scope = NewDisposeScope();
        var dir = TestPaths.TempDir();
        var path = Path.Combine(dir, "t.safetensors");
        var tensors = new Dictionary<string, Tensor>
        {
            ["matrix"] = RandomBits(dtype, new long[] { 7, 5 }, 1),
            ["cube"] = RandomBits(dtype, new long[] { 2, 3, 4 }, 2),
            ["scalar"] = RandomBits(dtype, Array.Empty<long>(), 3),
            ["empty"] = RandomBits(dtype, new long[] { 0, 4 }, 4),
        };
        var meta = new Dictionary<string, string> { ["format"] = "pt", ["note"] = "ünïcode \"quoted\"" };
        SafetensorsWriter.Save(path, tensors, meta);

        using var f = SafetensorsFile.Open(path);
        Assert.Equal(meta, f.Metadata);
        Assert.Equal(tensors.Keys.Order(), f.Keys.Order());
        foreach (var (name, expected) in tensors)
        {
            var e = f.Entry(name);
            Assert.Equal(dtype, e.DType);
            Assert.Equal(expected.shape, e.Shape);
            var actual = f.Load(name);
            Assert.Equal(expected.dtype, actual.dtype);
            Assert.Equal(expected.shape, actual.shape);
            Assert.Equal(expected.bytes.ToArray(), actual.bytes.ToArray());
            Assert.Equal(expected.bytes.ToArray(), f.ReadBytes(name));
        }
        Assert.Equal(0, f.Entry("empty").ByteLength);
        Assert.Empty(f.Entry("scalar").Shape);
    }

    [Fact]
    public void Mixed_dtypes_are_ordered_widest_first_then_by_name_and_aligned()
    {
        using var scope = NewDisposeScope();
        var path = Path.Combine(TestPaths.TempDir(), "mixed.safetensors");
        var tensors = new Dictionary<string, Tensor>
        {
            ["b_u8"] = RandomBits("U8", new long[] { 3 }, 1),
            ["a_bf16"] = RandomBits("BF16", new long[] { 3 }, 2),
            ["z_f64"] = RandomBits("F64", new long[] { 2 }, 3),
            ["a_f32"] = RandomBits("F32", new long[] { 5 }, 4),
            ["c_i64"] = RandomBits("I64", new long[] { 1 }, 5),
            ["a_bool"] = RandomBits("BOOL", new long[] { 2 }, 6),
        };
        SafetensorsWriter.Save(path, tensors);

        var bytes = File.ReadAllBytes(path);
        long n = BinaryPrimitives.ReadInt64LittleEndian(bytes);
        Assert.Equal(0, n % 8);
        var header = Encoding.UTF8.GetString(bytes, 8, (int)n);
        var trimmed = header.TrimEnd(' ');
        Assert.EndsWith("}", trimmed);
        Assert.True(header.Length - trimmed.Length < 8, "header padded with at most 7 spaces");
        using var doc = JsonDocument.Parse(header);
        var order = doc.RootElement.EnumerateObject().Select(p => p.Name).ToArray();
        // Size 8 (F64, I64), then 4, 2, 1; ties by name, bytes in the same order.
        Assert.Equal(new[] { "c_i64", "z_f64", "a_f32", "a_bf16", "a_bool", "b_u8" }, order);
        long expectedBegin = 0;
        foreach (var p in doc.RootElement.EnumerateObject())
        {
            var off = p.Value.GetProperty("data_offsets").EnumerateArray().Select(x => x.GetInt64()).ToArray();
            Assert.Equal(expectedBegin, off[0]);
            Assert.Equal(0, (8 + n + off[0]) % SafetensorsDType.SizeOf(tensors[p.Name].dtype));
            expectedBegin = off[1];
        }
        Assert.Equal(bytes.Length, 8 + n + expectedBegin);
    }

    /// <summary>Our writer reproduces the reference (Python safetensors) files byte for byte.</summary>
    [Theory]
    [InlineData("llama-tiny", "model.safetensors")]
    [InlineData("llama-tiny", "cases.safetensors")]
    [InlineData("qwen2-tiny", "model.safetensors")]
    public void Writer_output_equals_reference_file_bytes(string model, string file)
    {
        using var scope = NewDisposeScope();
        var src = Path.Combine(TestPaths.Model(model), file);
        using var f = SafetensorsFile.Open(src);
        var dst = Path.Combine(TestPaths.TempDir(), file);
        SafetensorsWriter.Save(dst, f.LoadAll(), f.Metadata.Count > 0 ? f.Metadata.ToDictionary() : null);
        var expected = File.ReadAllBytes(src);
        var actual = File.ReadAllBytes(dst);
        long n = BinaryPrimitives.ReadInt64LittleEndian(expected);
        Assert.Equal(Encoding.UTF8.GetString(expected, 8, (int)n), Encoding.UTF8.GetString(actual, 8, (int)BinaryPrimitives.ReadInt64LittleEndian(actual)));
        Assert.Equal(expected, actual);
    }

    [Fact]
    public void Non_contiguous_tensor_is_written_in_logical_order()
    {
        using var scope = NewDisposeScope();
        var path = Path.Combine(TestPaths.TempDir(), "t.safetensors");
        var t = arange(12, ScalarType.Float32).view(3, 4).t();
        SafetensorsWriter.Save(path, new Dictionary<string, Tensor> { ["t"] = t });
        using var f = SafetensorsFile.Open(path);
        var back = f.Load("t");
        Assert.Equal(new long[] { 4, 3 }, back.shape);
        Assert.True(back.equal(t).all().item<bool>());
    }

    [Fact]
    public void Load_casts_to_the_requested_dtype()
    {
        using var scope = NewDisposeScope();
        var path = Path.Combine(TestPaths.TempDir(), "t.safetensors");
        SafetensorsWriter.Save(path, new Dictionary<string, Tensor> { ["x"] = tensor(new[] { 1.5f, -2.25f }) });
        using var f = SafetensorsFile.Open(path);
        var b = f.Load("x", dtype: ScalarType.BFloat16);
        Assert.Equal(ScalarType.BFloat16, b.dtype);
        Assert.Equal(new[] { 1.5f, -2.25f }, b.to(ScalarType.Float32).data<float>().ToArray());
    }

    [Fact]
    public void Writer_rejects_duplicate_names_and_unsupported_dtypes()
    {
        using var scope = NewDisposeScope();
        var path = Path.Combine(TestPaths.TempDir(), "t.safetensors");
        var dup = new[] { KeyValuePair.Create("x", zeros(2)), KeyValuePair.Create("x", zeros(3)) };
        var e1 = Assert.Throws<PeftSharpException>(() => SafetensorsWriter.Save(path, dup));
        Assert.Contains("'x' given twice", e1.Message);
        var e2 = Assert.Throws<PeftSharpException>(() =>
            SafetensorsWriter.Save(path, new Dictionary<string, Tensor> { ["c"] = zeros(2, ScalarType.ComplexFloat32) }));
        Assert.Contains("ComplexFloat32", e2.Message);
        Assert.False(File.Exists(path));
    }
}
