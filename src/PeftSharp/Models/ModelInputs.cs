using static TorchSharp.torch;

namespace PeftSharp.Models;

/// <summary>
/// The arguments of a forward pass, with transformers' names. Either <see cref="InputIds"/> or
/// <see cref="InputsEmbeds"/> (the seam prompt methods use). <see cref="AttentionMask"/> covers the cached
/// positions too: shape [batch, past + seq], 1 = attend. Without <see cref="PositionIds"/> positions are
/// past..past+seq-1 for every row, as transformers' plain forward does.
/// </summary>
public sealed class ModelInputs
{
    public Tensor? InputIds { get; init; }
    public Tensor? InputsEmbeds { get; init; }
    public Tensor? AttentionMask { get; init; }
    public Tensor? PositionIds { get; init; }
    public Tensor? TokenTypeIds { get; init; }
    public KVCache? Cache { get; init; }
    public bool OutputHiddenStates { get; init; }

    internal (long Batch, long Seq) Shape()
    {
        if (InputsEmbeds is not null) return (InputsEmbeds.shape[0], InputsEmbeds.shape[1]);
        if (InputIds is null) throw new PeftSharpException("forward needs input ids or inputs embeds");
        if (InputIds.dim() != 2) throw new PeftSharpException($"input ids must be [batch, seq]; got [{string.Join(", ", InputIds.shape)}]");
        return (InputIds.shape[0], InputIds.shape[1]);
    }
}

/// <summary>What a forward returns. Logits for LMs ([batch, seq, vocab]) or classifiers ([batch, labels]).</summary>
public sealed class ModelOutput
{
    public required Tensor Logits { get; init; }
    /// <summary>transformers' output_hidden_states: embeddings, then each block's output (the last one after the final norm for decoders).</summary>
    public IReadOnlyList<Tensor>? HiddenStates { get; init; }
    public Tensor? LastHiddenState { get; init; }
    public Tensor? PooledOutput { get; init; }
}
