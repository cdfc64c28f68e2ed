using static TorchSharp.torch;

namespace PeftSharp.Models;

/// <summary>
/// Builds transformers' additive 4-D masks [batch, 1, q, k]: 0 where a query may attend, the dtype's
/// minimum elsewhere. A finite minimum (not -inf) keeps fully masked rows (left padding) free of NaN,
/// which would otherwise leak through the value matmul into real positions.
/// </summary>
public static class AttentionMasks
{
    /// <summary>Causal mask for queries at positions past..past+q-1 over past+q keys, with padding and an optional sliding window.</summary>
    public static Tensor Causal(long batch, long q, long past, Tensor? paddingMask, ScalarType dtype, Device device, int? slidingWindow = null)
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
        return Additive(allowed4, dtype).MoveToOuterDisposeScope();
    }

    /// <summary>Bidirectional (encoder) mask from a [batch, k] padding mask.</summary>
    public static Tensor Bidirectional(Tensor paddingMask, ScalarType dtype)
    {
        using var scope = NewDisposeScope();
        var allowed = paddingMask.to(ScalarType.Bool).unsqueeze(1).unsqueeze(1);
        return Additive(allowed, dtype).MoveToOuterDisposeScope();
    }

    static Tensor Additive(Tensor allowed, ScalarType dtype)
    {
        var min = dtype == ScalarType.BFloat16 ? -3.3895313892515355e38 : dtype == ScalarType.Float64 ? double.MinValue : float.MinValue;
        return zeros(allowed.shape, dtype, allowed.device).masked_fill(allowed.logical_not(), min);
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
