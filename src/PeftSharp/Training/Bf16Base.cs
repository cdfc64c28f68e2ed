using TorchSharp;
using TorchSharp.Modules;
using PeftSharp.Tuners.Lora;
using static TorchSharp.torch;

namespace PeftSharp.Training;

/// <summary>
/// The trainer's bf16 mode, by hand because TorchSharp has no autocast. Every frozen Linear/Embedding weight is stored
/// in bfloat16; frozen Linears compute in bfloat16 and their outputs stay bfloat16, as under torch.autocast, so the
/// attention and MLP interiors (RoPE, SDPA, SwiGLU) run in bfloat16 too, while the residual stream, the norms and the
/// loss stay float32 (frozen embeddings hand float32 to it). LoRA's A/B run in bfloat16 from their float32 weights
/// (<see cref="LoraLayer.AutocastDtype"/>). Trainable tensors, gradients and optimizer state stay float32; a trainable
/// Linear (adapter, head) casts its input to its weight's dtype.
/// </summary>
public static class Bf16Base
{
    /// <summary>Converts the frozen layers of <paramref name="root"/>; returns how many it converted.</summary>
    public static int Apply(nn.Module root)
    {
        int n = 0;
        using var _ = no_grad();
        foreach (var (_, m) in root.named_modules())
        {
            switch (m)
            {
                case Linear l when !l.weight!.requires_grad && (l.bias is null || !l.bias.requires_grad):
                    l.to(ScalarType.BFloat16);
                    l.register_forward_pre_hook((_, x) => x.dtype == ScalarType.BFloat16 ? x : x.to(ScalarType.BFloat16));
                    n++;
                    break;
                case Linear l:
                    l.register_forward_pre_hook((_, x) => x.dtype == l.weight!.dtype ? x : x.to(l.weight!.dtype));
                    break;
                case Embedding e when !e.weight!.requires_grad:
                    e.to(ScalarType.BFloat16);
                    e.register_forward_hook((_, x, y) => y.to(ScalarType.Float32));
                    n++;
                    break;
                case LoraLayer lora:
                    lora.AutocastDtype = ScalarType.BFloat16;
                    break;
            }
        }
        return n;
    }
}
