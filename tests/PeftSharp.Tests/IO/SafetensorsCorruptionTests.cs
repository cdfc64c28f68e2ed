using System.Buffers.Binary;
using System.Text;
using PeftSharp.IO;
using static TorchSharp.torch;

namespace PeftSharp.Tests.IO;

/// <summary>Every malformed file must fail on open with a PeftFormatException naming the file and the fault.</summary>
public class SafetensorsCorruptionTests
{
    /// <summary>8-byte little-endian header length, the header bytes, then <paramref name="dataBytes"/> bytes of data.</summary>
    static string Raw(byte[] header, int dataBytes, ulong? declaredLength = null)
    {
        var path = Path.Combine(TestPaths.TempDir(), "bad.safetensors");
        var bytes = new byte[8 + header.Length + dataBytes];
        BinaryPrimitives.WriteUInt64LittleEndian(bytes, declaredLength ?? (ulong)header.Length);
        header.CopyTo(bytes, 8);
        File.WriteAllBytes(path, bytes);
        return path;
    }

    static string Raw(string header, int dataBytes) => Raw(Encoding.UTF8.GetBytes(header), dataBytes);

    static void AssertFault(string path, params string[] fragments)
    {
        var e = Assert.Throws<PeftFormatException>(() => { using var f = SafetensorsFile.Open(path); });
        Assert.Equal(path, e.FilePath);
        Assert.Contains(path, e.Message);
        foreach (var s in fragments) Assert.Contains(s, e.Message);
    }

    [Fact]
    public void Empty_file() => AssertFault(WriteBytes(Array.Empty<byte>()), "0 bytes", "shorter than the 8-byte header length");

    [Fact]
    public void File_shorter_than_8_bytes() => AssertFault(WriteBytes(new byte[] { 1, 2, 3 }), "3 bytes", "shorter than the 8-byte header length");

    static string WriteBytes(byte[] b)
    {
        var path = Path.Combine(TestPaths.TempDir(), "short.safetensors");
        File.WriteAllBytes(path, b);
        return path;
    }

    [Fact]
    public void Header_length_past_end_of_file() =>
        AssertFault(Raw(Encoding.UTF8.GetBytes("{}"), 0, declaredLength: 1000), "header length 1000 runs past the end of the file (10 bytes)");

    [Fact]
    public void Header_length_of_2_to_the_64_minus_1() =>
        AssertFault(Raw(Encoding.UTF8.GetBytes("{}"), 0, declaredLength: ulong.MaxValue), $"header length {ulong.MaxValue} exceeds the 100000000-byte limit");

    [Fact]
    public void Header_not_json() => AssertFault(Raw("this is not json", 0), "header is not valid JSON");

    [Fact]
    public void Header_not_utf8() => AssertFault(Raw(new byte[] { (byte)'{', 0xff, 0xfe, (byte)'}' }, 0), "header is not valid UTF-8");

    [Fact]
    public void Tensor_name_not_utf8() =>
        AssertFault(Raw(new byte[] { (byte)'{', (byte)'"', 0xa5, (byte)'"', (byte)':', (byte)'1', (byte)'}' }, 0), "header is not valid UTF-8");

    [Fact]
    public void Header_json_not_an_object() => AssertFault(Raw("[1, 2, 3]", 0), "header JSON must be an object");

    [Fact]
    public void Entry_not_an_object() => AssertFault(Raw("{\"w\": 5}", 0), "tensor 'w'", "entry must be an object");

    [Fact]
    public void Unknown_dtype() =>
        AssertFault(Raw("{\"w\":{\"dtype\":\"F8_E4M3\",\"shape\":[2],\"data_offsets\":[0,2]}}", 2), "tensor 'w'", "unknown dtype 'F8_E4M3'", "BF16");

    [Fact]
    public void Missing_dtype() =>
        AssertFault(Raw("{\"w\":{\"shape\":[2],\"data_offsets\":[0,8]}}", 8), "tensor 'w'", "missing string field 'dtype'");

    [Fact]
    public void Shape_and_byte_size_mismatch() =>
        AssertFault(Raw("{\"w\":{\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[0,16]}}", 16), "tensor 'w'", "shape [2, 3] of F32 needs 24 bytes but data_offsets span 16");

    [Fact]
    public void Negative_dimension() =>
        AssertFault(Raw("{\"w\":{\"dtype\":\"F32\",\"shape\":[-1],\"data_offsets\":[0,4]}}", 4), "tensor 'w'", "shape[0] must be a non-negative integer");

    [Fact]
    public void Shape_overflow() =>
        AssertFault(Raw("{\"w\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296],\"data_offsets\":[0,4]}}", 4), "tensor 'w'", "overflows");

    [Fact]
    public void Offsets_out_of_range() =>
        AssertFault(Raw("{\"w\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]}}", 8), "tensor 'w'", "data_offsets [0, 16] out of range of the 8-byte data section");

    [Fact]
    public void Offsets_reversed() =>
        AssertFault(Raw("{\"w\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[8,4]}}", 8), "tensor 'w'", "data_offsets [8, 4] out of range");

    [Fact]
    public void Offsets_not_integers() =>
        AssertFault(Raw("{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[\"0\",\"4\"]}}", 4), "tensor 'w'", "data_offsets must be integers");

    [Fact]
    public void Offsets_wrong_arity() =>
        AssertFault(Raw("{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0]}}", 4), "tensor 'w'", "data_offsets must be an array [begin, end]");

    [Fact]
    public void Overlapping_offsets() =>
        AssertFault(Raw("{\"a\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]},\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,16]}}", 16),
            "tensors 'a' [0, 16) and 'b' [8, 16) overlap");

    [Fact]
    public void Gap_between_tensors() =>
        AssertFault(Raw("{\"a\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[0,2]},\"b\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[4,6]}}", 6),
            "gap between tensors 'a' (ends at byte 2) and 'b' (starts at 4)");

    [Fact]
    public void First_tensor_not_at_zero() =>
        AssertFault(Raw("{\"a\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[2,4]}}", 4), "tensor 'a' starts at byte 2 of the data section, expected 0");

    [Fact]
    public void Bytes_after_the_last_tensor() =>
        AssertFault(Raw("{\"a\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[0,2]}}", 3), "the tensors cover 2 bytes but the data section holds 3");

    [Fact]
    public void Byte_count_overflow() =>
        AssertFault(Raw("{\"w\":{\"dtype\":\"F64\",\"shape\":[2305843009213693952],\"data_offsets\":[0,8]}}", 8), "tensor 'w'", "overflows a 64-bit byte count");

    [Fact]
    public void Header_over_the_reference_cap() =>
        AssertFault(Raw(Encoding.UTF8.GetBytes("{}"), 0, declaredLength: 100_000_001), "exceeds the 100000000-byte limit");

    [Fact]
    public void Duplicate_tensor_name() =>
        AssertFault(Raw("{\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]},\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[1,2]}}", 2),
            "tensor 'a' appears twice");

    [Fact]
    public void Metadata_not_strings() => AssertFault(Raw("{\"__metadata__\":{\"format\":1}}", 0), "__metadata__.format must be a string");

    [Fact]
    public void Truncated_data_of_a_real_file()
    {
        using var scope = NewDisposeScope();
        var good = Path.Combine(TestPaths.TempDir(), "good.safetensors");
        SafetensorsWriter.Save(good, new Dictionary<string, Tensor> { ["a"] = ones(16), ["b"] = zeros(8) });
        var bytes = File.ReadAllBytes(good);
        var path = WriteBytes(bytes[..^10]);
        AssertFault(path, "tensor 'b'", "out of range of the");
    }

    [Fact]
    public void Truncated_inside_the_header()
    {
        using var scope = NewDisposeScope();
        var good = Path.Combine(TestPaths.TempDir(), "good.safetensors");
        SafetensorsWriter.Save(good, new Dictionary<string, Tensor> { ["a"] = ones(16) });
        var path = WriteBytes(File.ReadAllBytes(good)[..20]);
        AssertFault(path, "runs past the end of the file (20 bytes)");
    }

    [Fact]
    public void Missing_file()
    {
        var path = Path.Combine(TestPaths.TempDir(), "nope.safetensors");
        AssertFault(path, "file not found");
    }

    /// <summary>Random byte flips in a valid file: the reader either opens it or throws PeftFormatException, nothing else.</summary>
    [Fact]
    public void Random_corruptions_never_escape_as_other_exceptions()
    {
        using var scope = NewDisposeScope();
        var good = Path.Combine(TestPaths.TempDir(), "good.safetensors");
        SafetensorsWriter.Save(good, new Dictionary<string, Tensor> { ["alpha"] = ones(3, 4), ["beta"] = arange(6), ["gamma"] = zeros(2, ScalarType.BFloat16) });
        var original = File.ReadAllBytes(good);
        long n = BinaryPrimitives.ReadInt64LittleEndian(original);
        var rng = new Random(7);
        var path = Path.Combine(TestPaths.TempDir(), "fuzz.safetensors");
        int opened = 0, rejected = 0;
        for (int i = 0; i < 300; i++)
        {
            var b = (byte[])original.Clone();
            int flips = 1 + rng.Next(3);
            for (int k = 0; k < flips; k++) b[rng.Next(8 + (int)n)] = (byte)rng.Next(256);
            File.WriteAllBytes(path, b);
            try
            {
                using var f = SafetensorsFile.Open(path);
                foreach (var key in f.Keys) f.Load(key).Dispose();
                opened++;
            }
            catch (PeftFormatException e)
            {
                Assert.Contains(path, e.Message);
                rejected++;
            }
        }
        Assert.True(rejected > 100, $"only {rejected} of 300 corruptions rejected");
        Assert.Equal(300, opened + rejected);
    }
}
