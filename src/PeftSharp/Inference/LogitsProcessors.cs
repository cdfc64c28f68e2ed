using TorchSharp;
using static TorchSharp.torch;

namespace PeftSharp.Inference;

/// <summary>
/// transformers' logits processors and warpers on [batch, vocab] float scores, in generate()'s order:
/// repetition penalty (always), then, only when sampling, temperature, top-k, top-p.
/// Filtered entries become -inf.
/// </summary>
public static class LogitsProcessors
{
    /// <summary>
    /// Applies what <paramref name="options"/> asks for to the next-token scores. <paramref name="sequences"/>
    /// ([batch, len], prompt padding included: HF penalizes it too) is needed only for a repetition penalty.
    /// </summary>
    public static Tensor Process(Tensor scores, Tensor? sequences, GenerationOptions options)
    {
        using var scope = NewDisposeScope();
        var s = scores;
        if (options.RepetitionPenalty != 1.0)
            s = RepetitionPenalty(s, sequences ?? throw new ArgumentNullException(nameof(sequences), "a repetition penalty needs the sequences so far"), options.RepetitionPenalty);
        if (options.DoSample)
        {
            if (options.Temperature != 1.0) s = s / options.Temperature;
            if (options.TopK > 0) s = TopK(s, options.TopK);
            if (options.TopP < 1.0) s = TopP(s, options.TopP);
        }
        return s.alias().MoveToOuterDisposeScope();
    }

    /// <summary>The next token of each row of processed scores: a draw from softmax when sampling (with <paramref name="rng"/>, or torch's global generator), else the argmax.</summary>
    public static Tensor Choose(Tensor scores, GenerationOptions options, torch.Generator? rng = null) =>
        options.DoSample ? multinomial(scores.softmax(-1), 1, generator: rng).squeeze(1) : scores.argmax(-1);

    /// <summary>Every token already in the row: negative scores multiplied by the penalty, others divided (CTRL's rule, HF's RepetitionPenaltyLogitsProcessor).</summary>
    public static Tensor RepetitionPenalty(Tensor scores, Tensor sequences, double penalty)
    {
        using var scope = NewDisposeScope();
        var ids = sequences.to(ScalarType.Int64, scores.device);
        var seen = scores.gather(1, ids);
        seen = where(seen < 0, seen * penalty, seen / penalty);
        return scores.scatter(1, ids, seen).MoveToOuterDisposeScope();
    }

    /// <summary>Keeps scores at least as large as the k-th largest (ties at the boundary stay).</summary>
    public static Tensor TopK(Tensor scores, int k)
    {
        using var scope = NewDisposeScope();
        k = (int)Math.Min(Math.Max(k, 1), scores.shape[^1]);
        var (values, _) = scores.topk(k);
        var threshold = values.narrow(-1, k - 1, 1);
        return scores.masked_fill(scores < threshold, double.NegativeInfinity).MoveToOuterDisposeScope();
    }

    /// <summary>
    /// Nucleus filtering as HF does it: sort ascending, drop tokens whose cumulative probability is
    /// &lt;= 1 - p, always keep the most likely token.
    /// </summary>
    public static Tensor TopP(Tensor scores, double p)
    {
        using var scope = NewDisposeScope();
        var (sorted, order) = scores.sort(-1, descending: false);
        var cumulative = sorted.softmax(-1).cumsum(-1);
        var remove = cumulative <= (1 - p);
        remove.narrow(-1, remove.shape[^1] - 1, 1).fill_(false);
        var removeAtIndex = remove.scatter(1, order, remove);
        return scores.masked_fill(removeAtIndex, double.NegativeInfinity).MoveToOuterDisposeScope();
    }
}
