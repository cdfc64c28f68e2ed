using System.Text.Json;
using static TorchSharp.torch;

namespace PeftSharp.IO;

/// <summary>Writes safetensors files atomically, in the reference layout: entries ordered by dtype size (widest first) then name, header padded with spaces to 8 bytes.</summary>
public static class SafetensorsWriter
{
    public static void Save(string path, IEnumerable<KeyValuePair<string, Tensor>> tensors, IReadOnlyDictionary<string, string>? metadata = null)
    {
        var items = tensors
            .Select(kv => (Name: kv.Key, Tensor: kv.Value, DType: SafetensorsDType.NameOf(kv.Value.dtype), Size: SafetensorsDType.SizeOf(kv.Value.dtype)))
            .OrderByDescending(x => x.Size).ThenBy(x => x.Name, StringComparer.Ordinal).ToList();
        var dup = items.GroupBy(x => x.Name).FirstOrDefault(g => g.Count() > 1);
        if (dup is not null) throw new PeftSharpException($"{path}: tensor name '{dup.Key}' given twice");

        using var ms = new MemoryStream();
        using (var w = new Utf8JsonWriter(ms))
        {
            w.WriteStartObject();
            if (metadata is { Count: > 0 })
            {
                w.WriteStartObject("__metadata__");
                foreach (var (k, v) in metadata) w.WriteString(k, v);
                w.WriteEndObject();
            }
            long offset = 0;
            foreach (var it in items)
            {
                long bytes = it.Tensor.numel() * it.Size;
                w.WriteStartObject(it.Name);
                w.WriteString("dtype", it.DType);
                w.WriteStartArray("shape");
                foreach (var d in it.Tensor.shape) w.WriteNumberValue(d);
                w.WriteEndArray();
                w.WriteStartArray("data_offsets");
                w.WriteNumberValue(offset); w.WriteNumberValue(offset + bytes);
                w.WriteEndArray();
                w.WriteEndObject();
                offset += bytes;
            }
            w.WriteEndObject();
        }
        var header = ms.ToArray().ToList();
        while (header.Count % 8 != 0) header.Add((byte)' ');

        AtomicFile.Write(path, s =>
        {
            s.Write(BitConverter.GetBytes((ulong)header.Count));
            s.Write(header.ToArray());
            foreach (var it in items) WriteTensor(s, it.Tensor);
        });
    }

    static void WriteTensor(Stream s, Tensor t)
    {
        if (t.numel() == 0) return;
        using var scope = NewDisposeScope();
        var c = t.detach().cpu().contiguous().view(-1);
        const long chunk = 1L << 28;
        for (long start = 0; start < c.numel(); start += chunk)
        {
            using var part = c.narrow(0, start, Math.Min(chunk, c.numel() - start));
            s.Write(part.bytes);
        }
    }
}
