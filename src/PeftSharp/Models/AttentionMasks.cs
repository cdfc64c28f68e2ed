using static TorchSharp.torch;

namespace PeftSharp.Models;

/// <summary>
/// Builds transformers' boolean 4-D attention masks [batch, 1, q, k] (true = may attend) for SDPA, as its sdpa
/// path does. A fully masked query row (a left pad) then gets a zero attention output, as torch >= 2.5 gives
/// transformers; an additive finite-minimum mask would instead average the masked values there, which changes
/// the loss wherever a pad position predicts the first real token (training fixture, left-padded row).
/// </summary>
public static class AttentionMasks
{
    /// <summary>Causal mask for queries at positions past..past+q-1 over past+q keys, with padding and an optional sliding window.</summary>
    public static Tensor Causal(long batch, long q, long past, Tensor? paddingMask, Device device, int? slidingWindow = null)
    {
        long k = past + q;
        using var scope = NewDisposeScope();
        var qPos = arange(past, past + q, device: device).unsqueeze(1);   // [q,1]
        var kPos = arange(0, k, device: device).unsqueeze(0);             // [1,k]
        var allowed = kPos <= qPos;
        if (slidingWindow is int w) allowed = allowed & (kPos > qPos - w);
        var allowed4 = allowed.unsqueeze(0).unsqueeze(0).expand(batch, 1, q, k);
        if (paddingMask is not null)
        {
            if (paddingMask.shape[1] != k)
                throw new PeftSharpException($"attention mask covers {paddingMask.shape[1]} positions but past + input is {k}");
            allowed4 = allowed4 & paddingMask.to(ScalarType.Bool, device).unsqueeze(1).unsqueeze(1);
        }
        return allowed4.contiguous().MoveToOuterDisposeScope();
    }

    /// <summary>Bidirectional (encoder) mask from a [batch, k] padding mask.</summary>
    public static Tensor Bidirectional(Tensor paddingMask)
    {
        using var scope = NewDisposeScope();
        return paddingMask.to(ScalarType.Bool).unsqueeze(1).unsqueeze(1).MoveToOuterDisposeScope();
    }

    /// <summary>Position ids as generate() derives them: cumsum(mask) - 1, with 1 at padded positions.</summary>
    public static Tensor PositionIdsFromMask(Tensor attentionMask)
    {
        using var scope = NewDisposeScope();
        var m = attentionMask.to(ScalarType.Int64);
        var pos = m.cumsum(1) - 1;
        return pos.masked_fill(m.eq(0), 1).MoveToOuterDisposeScope();
    }
}
