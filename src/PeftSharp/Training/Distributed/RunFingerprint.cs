using System.Security.Cryptography;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using PeftSharp.Training.Data;
using TorchSharp;
using static TorchSharp.torch;

namespace PeftSharp.Training.Distributed;

/// <summary>
/// What must be the same on every rank of a data-parallel run, as text (one fact per line, so the first differing
/// line names the difference): the training arguments, the model's parameters (name, dtype, shape, trainable) and
/// the training rows (count and one hash per row).
/// </summary>
public sealed record RunFingerprint(string Config, string Model, string Data)
{
    public IReadOnlyList<(string Name, string Text)> Parts => new[] { ("config", Config), ("model", Model), ("training data", Data) };

    static readonly JsonSerializerOptions Snake = new() { PropertyNamingPolicy = JsonNamingPolicy.SnakeCaseLower };

    public static RunFingerprint Of(TrainingArguments args, nn.Module root, IReadOnlyList<TrainExample> train)
    {
        var config = JsonSerializer.SerializeToNode(args, Snake)!.AsObject()
            .OrderBy(kv => kv.Key, StringComparer.Ordinal)
            .Select(kv => $"{kv.Key}: {kv.Value?.ToJsonString() ?? "null"}");
        var model = root.named_parameters().Select(p =>
            $"{p.name}: {p.parameter.dtype} [{string.Join(", ", p.parameter.shape)}]{(p.parameter.requires_grad ? " trainable" : "")}");
        var data = train.Select((e, i) => $"row {i}: {RowHash(e)}").Prepend($"rows: {train.Count}");
        return new RunFingerprint(string.Join('\n', config), string.Join('\n', model), string.Join('\n', data));
    }

    static string RowHash(TrainExample e)
    {
        var text = $"{string.Join(',', e.InputIds)}|{string.Join(',', e.AttentionMask ?? Array.Empty<int>())}|{string.Join(',', e.Labels ?? Array.Empty<int>())}|{e.ClassLabel}";
        return Convert.ToHexString(SHA256.HashData(Encoding.UTF8.GetBytes(text)), 0, 8).ToLowerInvariant();
    }

    /// <summary>The first line where <paramref name="mine"/> and rank 0's text differ, as "LINE (rank 0: LINE)".</summary>
    public static string FirstDifference(string mine, string rank0)
    {
        var a = mine.Split('\n'); var b = rank0.Split('\n');
        for (int i = 0; i < Math.Max(a.Length, b.Length); i++)
        {
            string? x = i < a.Length ? a[i] : null, y = i < b.Length ? b[i] : null;
            if (x != y) return $"{x ?? "(nothing)"} (rank 0: {y ?? "(nothing)"})";
        }
        return "(same text)";
    }
}
