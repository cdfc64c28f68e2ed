using PeftSharp.Models;
using TorchSharp;
using static TorchSharp.torch;

namespace PeftSharp.Training;

/// <summary>
/// NEFTune (HF's neftune_noise_alpha): while the model is in training mode, the input embeddings get uniform noise
/// in ±alpha/sqrt(L·d) (L the sequence length, d the hidden size); evaluation and generation see none.
/// </summary>
public sealed class Neftune : IDisposable
{
    readonly nn.HookableModule<Func<nn.Module<Tensor, Tensor>, Tensor, Tensor>, Func<nn.Module<Tensor, Tensor>, Tensor, Tensor, Tensor>>.HookRemover _hook;

    Neftune(nn.Module<Tensor, Tensor> embedding, double alpha)
    {
        _hook = embedding.register_forward_hook((module, _, output) =>
        {
            if (!module.training) return output;
            double mag = alpha / Math.Sqrt(output.shape[1] * output.shape[2]);
            using var noise = empty_like(output).uniform_(-mag, mag);
            return output + noise;
        });
    }

    public static Neftune Attach(PreTrainedModel model, double alpha) => new(model.InputEmbeddings, alpha);

    public void Dispose() => _hook.remove();
}
