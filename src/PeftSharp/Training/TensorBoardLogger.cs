using System.Buffers.Binary;
using System.Numerics;
using System.Text.Json.Nodes;
using Google.Protobuf;

namespace PeftSharp.Training;

/// <summary>
/// <c>report_to: tensorboard</c>: writes the trainer's log entries as TensorBoard scalars, the way transformers'
/// TensorBoardCallback names them ("train/loss", "train/learning_rate", "eval/loss", ...), into
/// <c>logging_dir</c> (default <c>output_dir/runs/DATE_HOST</c>).
/// </summary>
public sealed class TensorBoardLogger : IDisposable
{
    readonly TensorBoardEventWriter _writer;
    readonly Trainer _trainer;

    TensorBoardLogger(Trainer trainer, string dir)
    {
        _trainer = trainer;
        _writer = new TensorBoardEventWriter(dir);
        trainer.Logged += OnLogged;
    }

    /// <summary>The logger for a run whose report_to names tensorboard; null otherwise.</summary>
    public static TensorBoardLogger? Attach(Trainer trainer, TrainingArguments args)
    {
        if (!args.ReportTo.Any(r => r is "tensorboard" or "all")) return null;
        var dir = args.LoggingDir ?? Path.Combine(args.OutputDir, "runs", $"{DateTime.Now:MMMdd_HH-mm-ss}_{Environment.MachineName}");
        return new TensorBoardLogger(trainer, dir);
    }

    /// <summary>The event file being written.</summary>
    public string EventFile => _writer.Path;

    void OnLogged(JsonObject entry)
    {
        long step = entry["step"]?.GetValue<int>() ?? 0;
        var scalars = new List<(string, float)>();
        foreach (var (key, value) in entry)
        {
            if (key is "step" or "total_steps" or "elapsed_s" || value is not JsonValue v || !v.TryGetValue<double>(out var d)) continue;
            // transformers' rewrite_logs: eval_x -> eval/x, everything else -> train/x.
            var tag = key.StartsWith("eval_", StringComparison.Ordinal) ? "eval/" + key["eval_".Length..] : "train/" + key;
            scalars.Add((tag, (float)d));
        }
        _writer.WriteScalars(step, scalars);
    }

    public void Dispose()
    {
        _trainer.Logged -= OnLogged;
        _writer.Dispose();
    }
}

/// <summary>
/// A tfevents file: TFRecords (uint64 length, masked CRC32C of the length, the bytes, masked CRC32C of the bytes),
/// each holding an Event protobuf: the first carries file_version "brain.Event:2", the others a Summary of
/// simple_value scalars. Flushed after every event so TensorBoard shows a run while it trains.
/// </summary>
public sealed class TensorBoardEventWriter : IDisposable
{
    readonly FileStream _file;

    public string Path { get; }

    public TensorBoardEventWriter(string dir)
    {
        Directory.CreateDirectory(dir);
        long now = DateTimeOffset.UtcNow.ToUnixTimeSeconds();
        Path = System.IO.Path.Combine(dir, $"events.out.tfevents.{now}.{Environment.MachineName}.{Environment.ProcessId}.0");
        _file = new FileStream(Path, FileMode.CreateNew, FileAccess.Write, FileShare.Read);
        WriteEvent(0, o => { o.WriteTag(3, WireFormat.WireType.LengthDelimited); o.WriteString("brain.Event:2"); }); // Event.file_version
    }

    public void WriteScalars(long step, IReadOnlyList<(string Tag, float Value)> scalars)
    {
        if (scalars.Count == 0) return;
        using var summary = new MemoryStream();
        var s = new CodedOutputStream(summary);
        foreach (var (tag, value) in scalars)
        {
            using var one = new MemoryStream();
            var v = new CodedOutputStream(one);
            v.WriteTag(1, WireFormat.WireType.LengthDelimited); v.WriteString(tag);        // Summary.Value.tag
            v.WriteTag(2, WireFormat.WireType.Fixed32); v.WriteFloat(value);                // Summary.Value.simple_value
            v.Flush();
            s.WriteTag(1, WireFormat.WireType.LengthDelimited); s.WriteBytes(ByteString.CopyFrom(one.ToArray())); // Summary.value
        }
        s.Flush();
        var bytes = ByteString.CopyFrom(summary.ToArray());
        WriteEvent(step, o => { o.WriteTag(5, WireFormat.WireType.LengthDelimited); o.WriteBytes(bytes); }); // Event.summary
    }

    void WriteEvent(long step, Action<CodedOutputStream> what)
    {
        using var ms = new MemoryStream();
        var o = new CodedOutputStream(ms);
        o.WriteTag(1, WireFormat.WireType.Fixed64); o.WriteDouble(DateTimeOffset.UtcNow.ToUnixTimeMilliseconds() / 1000.0); // wall_time
        if (step != 0) { o.WriteTag(2, WireFormat.WireType.Varint); o.WriteInt64(step); }
        what(o);
        o.Flush();
        WriteRecord(ms.ToArray());
    }

    void WriteRecord(byte[] data)
    {
        Span<byte> header = stackalloc byte[12];
        BinaryPrimitives.WriteUInt64LittleEndian(header, (ulong)data.Length);
        BinaryPrimitives.WriteUInt32LittleEndian(header[8..], MaskedCrc32C(header[..8]));
        Span<byte> footer = stackalloc byte[4];
        BinaryPrimitives.WriteUInt32LittleEndian(footer, MaskedCrc32C(data));
        _file.Write(header);
        _file.Write(data);
        _file.Write(footer);
        _file.Flush();
    }

    /// <summary>TFRecord's checksum: CRC32C (Castagnoli), rotated right by 15 and offset by 0xa282ead8.</summary>
    public static uint MaskedCrc32C(ReadOnlySpan<byte> data)
    {
        uint crc = 0xFFFFFFFF;
        foreach (var b in data) crc = BitOperations.Crc32C(crc, b);
        crc = ~crc;
        return ((crc >> 15) | (crc << 17)) + 0xa282ead8;
    }

    public void Dispose() => _file.Dispose();
}
