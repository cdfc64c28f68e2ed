using static TorchSharp.torch;

namespace PeftSharp.Training.Data;

/// <summary>
/// One tokenized training row. For causal LMs <see cref="Labels"/> aligns with <see cref="InputIds"/> (-100 where no
/// loss is taken; null = train on every token); for classification <see cref="ClassLabel"/> holds the class.
/// </summary>
public sealed record TrainExample
{
    public required int[] InputIds { get; init; }
    public int[]? AttentionMask { get; init; }
    public int[]? Labels { get; init; }
    public int? ClassLabel { get; init; }

    /// <summary>Tokens that take part in the loss (the unshifted labels that are not -100).</summary>
    public int LabelTokens => Labels?.Count(l => l != (int)Losses.IgnoreIndex) ?? InputIds.Length;
}

/// <summary>A padded batch on a device: input_ids, attention_mask and labels (token labels or class ids).</summary>
public sealed class TrainBatch : IDisposable
{
    public required Tensor InputIds { get; init; }
    public required Tensor AttentionMask { get; init; }
    public required Tensor Labels { get; init; }
    public int Rows { get; init; }
    /// <summary>Non-pad tokens (for tokens/s).</summary>
    public long Tokens { get; init; }

    /// <summary>Right-pads rows to the longest (pad id, mask 0, label -100), as DataCollatorForSeq2Seq does.</summary>
    public static TrainBatch Collate(IReadOnlyList<TrainExample> rows, int padId, Device device, bool classification)
    {
        if (rows.Count == 0) throw new PeftSharpException("cannot collate an empty batch");
        int len = rows.Max(r => r.InputIds.Length);
        var ids = new long[rows.Count * len];
        var mask = new long[rows.Count * len];
        var labels = new long[classification ? rows.Count : rows.Count * len];
        long tokens = 0;
        for (int i = 0; i < rows.Count; i++)
        {
            var r = rows[i];
            for (int j = 0; j < len; j++)
            {
                bool real = j < r.InputIds.Length;
                int k = i * len + j;
                ids[k] = real ? r.InputIds[j] : padId;
                mask[k] = real ? (r.AttentionMask?[j] ?? 1) : 0;
                if (!classification) labels[k] = real ? (r.Labels?[j] ?? r.InputIds[j]) : Losses.IgnoreIndex;
                tokens += mask[k];
            }
            if (classification)
                labels[i] = r.ClassLabel ?? throw new PeftSharpException($"row {i} of a classification batch has no label");
        }
        long[] shape = { rows.Count, len };
        return new TrainBatch
        {
            InputIds = tensor(ids, shape, device: device),
            AttentionMask = tensor(mask, shape, device: device),
            Labels = classification ? tensor(labels, device: device) : tensor(labels, shape, device: device),
            Rows = rows.Count,
            Tokens = tokens,
        };
    }

    public void Dispose() { InputIds.Dispose(); AttentionMask.Dispose(); Labels.Dispose(); }
}
