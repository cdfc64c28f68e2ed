using System.Buffers.Binary;
using System.Text;
using System.Text.Json.Nodes;
using CsCheck;
using PeftSharp.IO;
using static TorchSharp.torch;

namespace PeftSharp.Tests.Fuzz;

/// <summary>Mutated safetensors files: opened and read, or refused with the file named; an accepted file is tiled exactly.</summary>
public class SafetensorsFuzzTests
{
    static readonly string[] DTypes = ["F64", "F32", "F16", "BF16", "I64", "I32", "I16", "I8", "U8", "BOOL", "F8_E4M3", "U64", "f32", ""];
    static readonly long[] Numbers = [0, 1, 2, 3, 4, 7, 8, 12, 16, 24, 48, -1, -8, int.MaxValue, uint.MaxValue, long.MaxValue, 1L << 62, 4294967296];

    static byte[] Valid()
    {
        using var scope = NewDisposeScope();
        var path = Path.Combine(TestPaths.TempDir(), "valid.safetensors");
        SafetensorsWriter.Save(path, new Dictionary<string, Tensor> { ["alpha"] = ones(3, 4), ["beta"] = arange(6), ["gamma"] = zeros(2, ScalarType.BFloat16), ["empty"] = zeros(0) });
        return File.ReadAllBytes(path);
    }

    static byte[] WithHeader(byte[] file, Func<string, string> change, int lengthDelta = 0)
    {
        long n = BinaryPrimitives.ReadInt64LittleEndian(file);
        var header = Encoding.UTF8.GetBytes(change(Encoding.UTF8.GetString(file, 8, (int)n)));
        var data = file[(8 + (int)n)..];
        var result = new byte[8 + header.Length + data.Length];
        BinaryPrimitives.WriteInt64LittleEndian(result, header.Length + lengthDelta);
        header.CopyTo(result, 8);
        data.CopyTo(result, 8 + header.Length);
        return result;
    }

    // One structured mutation of the header JSON: a field of a tensor entry set to a hostile value.
    static string MutateEntry(string header, int tensor, int field, int pick)
    {
        var root = JsonNode.Parse(header)!.AsObject();
        var names = root.Select(kv => kv.Key).Where(k => k != "__metadata__").ToList();
        var entry = root[names[tensor % names.Count]]!.AsObject();
        switch (field % 6)
        {
            case 0: entry["dtype"] = DTypes[pick % DTypes.Length]; break;
            case 1: entry["shape"]!.AsArray().Add(Numbers[pick % Numbers.Length]); break;
            case 2 when entry["shape"]!.AsArray().Count > 0: entry["shape"]![0] = Numbers[pick % Numbers.Length]; break;
            case 3: entry["data_offsets"]![pick % 2] = Numbers[pick % Numbers.Length]; break;
            case 4: entry["data_offsets"] = pick % 3 == 0 ? new JsonArray() : pick % 3 == 1 ? new JsonArray(0, 1, 2) : "0-8"; break;
            default: root["__metadata__"] = pick % 2 == 0 ? new JsonObject { ["k"] = pick } : JsonValue.Create(pick); break;
        }
        return root.ToJsonString();
    }

    static void OpenAndRead(FuzzHarness h, string path, byte[] bytes, string what)
    {
        File.WriteAllBytes(path, bytes);
        h.Case(what, path, () =>
        {
            using var scope = NewDisposeScope();
            using var f = SafetensorsFile.Open(path);
            foreach (var k in f.Keys) f.Load(k).Dispose();
            // The reference's invariant on anything accepted: the tensors tile the data section exactly.
            long n = BinaryPrimitives.ReadInt64LittleEndian(bytes);
            Assert.Equal(bytes.Length - 8 - n, f.Entries.Values.Sum(e => e.ByteLength));
        });
    }

    [Fact]
    public void Mutated_headers_and_bytes_open_correctly_or_are_refused_clearly()
    {
        var valid = Valid();
        var h = new FuzzHarness("safetensors", TimeSpan.FromSeconds(5));
        var path = Path.Combine(TestPaths.TempDir(), "fuzz.safetensors");

        Gen.Select(Gen.Int[0, 3], Gen.Int[0, 5], Gen.Int[0, 1000])
            .Fuzz((t, f, p) => OpenAndRead(h, path, WithHeader(valid, s => MutateEntry(s, t, f, p)), $"entry {t} field {f} pick {p}"), iter: FuzzHarness.Iter(300));

        Gen.Select(Gen.Int[-9, 9], Gen.Int[0, 2])
            .Fuzz((delta, pad) => OpenAndRead(h, path, WithHeader(valid, s => s + new string(' ', pad * 4), delta), $"length {delta:+#;-#;0} pad {pad * 4}"), iter: FuzzHarness.Iter(60));

        long headerLen = BinaryPrimitives.ReadInt64LittleEndian(valid);
        Gen.Select(Gen.Int[0, (int)headerLen + 7], Gen.Byte)
            .Fuzz((at, b) =>
            {
                var bytes = (byte[])valid.Clone();
                bytes[at] = b;
                OpenAndRead(h, path, bytes, $"byte {at} = {b}");
            }, iter: FuzzHarness.Iter(300));

        Gen.Int[-40, 40].Fuzz(cut =>
        {
            var bytes = cut < 0 ? valid[..^(-cut)] : valid.Concat(new byte[cut]).ToArray();
            OpenAndRead(h, path, bytes, $"size {cut:+#;-#;0}");
        }, iter: FuzzHarness.Iter(40));

        h.Report(minRejected: 300);
    }
}
