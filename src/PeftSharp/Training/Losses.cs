using TorchSharp;
using static TorchSharp.torch;
using static TorchSharp.torch.nn;

namespace PeftSharp.Training;

/// <summary>The losses transformers' models compute (ForCausalLMLoss, sequence classification).</summary>
public static class Losses
{
    public const long IgnoreIndex = -100;

    /// <summary>
    /// transformers' ForCausalLMLoss: logits in float32, labels shifted left by one (a -100 appended), cross entropy
    /// ignoring -100; the sum divided by <paramref name="numItemsInBatch"/> when given (Trainer's gradient-accumulation
    /// normalization), else the mean over counted tokens.
    /// </summary>
    public static Tensor CausalLM(Tensor logits, Tensor labels, long? numItemsInBatch = null)
    {
        using var scope = NewDisposeScope();
        long vocab = logits.shape[^1];
        var padded = functional.pad(labels, new long[] { 0, 1 }, value: IgnoreIndex);
        var shifted = padded.narrow(1, 1, labels.shape[1]).contiguous().view(-1);
        var flat = logits.to(ScalarType.Float32).view(-1, vocab);
        Tensor loss = numItemsInBatch is { } n
            ? functional.cross_entropy(flat, shifted, ignore_index: IgnoreIndex, reduction: Reduction.Sum) / (double)n
            : functional.cross_entropy(flat, shifted, ignore_index: IgnoreIndex, reduction: Reduction.Mean);
        return loss.MoveToOuterDisposeScope();
    }

    /// <summary>Single-label classification: cross entropy, mean over rows (BertForSequenceClassification).</summary>
    public static Tensor Classification(Tensor logits, Tensor labels) =>
        functional.cross_entropy(logits.to(ScalarType.Float32), labels);

    /// <summary>Label tokens that count for Trainer's num_items_in_batch (the unshifted labels that are not -100).</summary>
    public static long CountItems(Tensor labels) => labels.ne(IgnoreIndex).sum().item<long>();
}
