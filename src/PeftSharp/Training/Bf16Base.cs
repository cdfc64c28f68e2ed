using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace PeftSharp.Training;

/// <summary>
/// The trainer's bf16 mode, by hand because TorchSharp has no autocast: every frozen Linear/Embedding weight is
/// stored in bfloat16 and its layer computes in bfloat16 (inputs cast down, outputs cast back to float32), while
/// trainable tensors, gradients and optimizer state stay float32.
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
                    l.register_forward_hook((_, x, y) => y.to(ScalarType.Float32));
                    n++;
                    break;
                case Embedding e when !e.weight!.requires_grad:
                    e.to(ScalarType.BFloat16);
                    e.register_forward_hook((_, x, y) => y.to(ScalarType.Float32));
                    n++;
                    break;
            }
        }
        return n;
    }
}
