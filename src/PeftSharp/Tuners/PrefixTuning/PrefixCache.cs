using PeftSharp.Models;
using PeftSharp.Tuners.PromptLearning;
using static TorchSharp.torch;

namespace PeftSharp.Tuners.PrefixTuning;

/// <summary>
/// The KV-cache seam of the prefix methods (peft's prefix tuning and AdapterHub's): the first forward into a cache
/// (or a plain forward, which gets a cache of its own) seeds every layer with the learned prefix; later decode steps
/// of a generation find it there. The attention mask gets the prefix's columns in front.
/// </summary>
internal static class PrefixCache
{
    /// <param name="seed">Puts the prefix of every layer into an empty cache (<see cref="KVCache.SetPrefix"/>).</param>
    /// <param name="shiftPositions">peft: the real tokens start at position <paramref name="prefixLength"/>;
    /// AdapterHub: they keep positions 0..seq-1.</param>
    public static ModelOutput Forward(PreTrainedModel model, ModelInputs inputs, long prefixLength, Action<KVCache> seed, bool shiftPositions)
    {
        var ownCache = inputs.Cache is null ? model.NewCache() : null;
        var cache = inputs.Cache ?? ownCache!;
        try
        {
            Tensor? positions = inputs.PositionIds;
            if (shiftPositions) positions = positions is null ? null : positions + prefixLength;
            else if (positions is null)
            {
                // Without explicit ids the model would count the prefix as past tokens.
                var (b, t) = inputs.Shape();
                long past = Math.Max(0, cache.SeqLength - prefixLength);
                positions = arange(past, past + t, device: model.Device).unsqueeze(0).expand(b, t);
            }
            if (cache.SeqLength == 0) seed(cache);
            return model.Forward(new ModelInputs
            {
                InputIds = inputs.InputIds,
                InputsEmbeds = inputs.InputsEmbeds,
                AttentionMask = PromptLearner.ExtendMask(inputs.AttentionMask, prefixLength),
                PositionIds = positions,
                TokenTypeIds = inputs.TokenTypeIds,
                Cache = cache,
                OutputHiddenStates = inputs.OutputHiddenStates,
            });
        }
        finally { ownCache?.Dispose(); }
    }
}
