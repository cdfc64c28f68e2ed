using PeftSharp.Models;
using static TorchSharp.torch;

namespace PeftSharp.Tests.Tuners.Variants;

/// <summary>Small helpers shared by the LoRA-variant tests.</summary>
internal static class VariantTestModels
{
    public static PreTrainedModel LlamaTiny() => AutoModel.FromPretrained(TestPaths.Model("llama-tiny"));

    /// <summary>Next-token cross-entropy of a causal LM on <paramref name="ids"/> (labels = ids, mean over positions).</summary>
    public static Tensor CausalLoss(PreTrainedModel model, Tensor ids)
    {
        var logits = model.Forward(new ModelInputs { InputIds = ids }).Logits;
        long v = logits.shape[2];
        return nn.functional.cross_entropy(logits.narrow(1, 0, logits.shape[1] - 1).reshape(-1, v), ids.narrow(1, 1, ids.shape[1] - 1).reshape(-1));
    }

    /// <summary>A fixed random batch of token ids.</summary>
    public static Tensor Batch(long rows, long length, int seed)
    {
        using var g = new Generator((ulong)seed);
        return randint(3, 320, new long[] { rows, length }, generator: g);
    }
}
