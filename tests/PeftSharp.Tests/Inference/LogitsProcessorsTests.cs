using PeftSharp.Inference;
using static TorchSharp.torch;

namespace PeftSharp.Tests.Inference;

/// <summary>Hand-computed cases of transformers' processor semantics.</summary>
public class LogitsProcessorsTests
{
    static float[] Row(Tensor t) => t.data<float>().ToArray();

    [Fact]
    public void Repetition_penalty_divides_positive_and_multiplies_negative_scores_of_seen_tokens()
    {
        using var scores = tensor(new float[] { 2f, -2f, 1f, 4f }, new long[] { 1, 4 });
        using var seen = tensor(new long[] { 0, 1, 1 }, new long[] { 1, 3 });
        using var y = LogitsProcessors.RepetitionPenalty(scores, seen, 2.0);
        Assert.Equal(new[] { 1f, -4f, 1f, 4f }, Row(y));
    }

    [Fact]
    public void Top_k_keeps_ties_at_the_boundary()
    {
        using var scores = tensor(new float[] { 1f, 3f, 2f, 2f, 0f }, new long[] { 1, 5 });
        using var y = LogitsProcessors.TopK(scores, 2);
        Assert.Equal(new[] { float.NegativeInfinity, 3f, 2f, 2f, float.NegativeInfinity }, Row(y));
    }

    [Fact]
    public void Top_p_keeps_the_smallest_nucleus_and_at_least_one_token()
    {
        // Probabilities 0.5, 0.3, 0.15, 0.05; ascending cumulative 0.05, 0.2, 0.5, 1: with p = 0.75 those <= 0.25 go.
        var probs = new[] { 0.5, 0.3, 0.15, 0.05 };
        using var scores = tensor(probs.Select(p => (float)Math.Log(p)).ToArray(), new long[] { 1, 4 });
        using var y = LogitsProcessors.TopP(scores, 0.75);
        var kept = Row(y).Select(v => !float.IsNegativeInfinity(v)).ToArray();
        Assert.Equal(new[] { true, true, false, false }, kept);
        using var tiny = LogitsProcessors.TopP(scores, 1e-6);
        Assert.Equal(new[] { true, false, false, false }, Row(tiny).Select(v => !float.IsNegativeInfinity(v)).ToArray());
    }

    [Fact]
    public void Warpers_apply_only_when_sampling()
    {
        using var scores = tensor(new float[] { 1f, 3f, 2f }, new long[] { 1, 3 });
        using var seq = tensor(new long[] { 1 }, new long[] { 1, 1 });
        var greedy = new GenerationOptions { TopK = 1, Temperature = 0.5, RepetitionPenalty = 3.0 };
        using var g = LogitsProcessors.Process(scores, seq, greedy);
        Assert.Equal(new[] { 1f, 1f, 2f }, Row(g));
        using var s = LogitsProcessors.Process(scores, seq, greedy with { DoSample = true });
        Assert.Equal(new[] { float.NegativeInfinity, float.NegativeInfinity, 4f }, Row(s));
    }
}
