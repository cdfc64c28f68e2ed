using TorchSharp;
using TorchSharp.Modules;
using PeftSharp.Models;
using PeftSharp.Tuners;
using static TorchSharp.torch;

namespace PeftSharp.Training;

/// <summary>
/// The trainer's bf16 mode, by hand because TorchSharp has no autocast. Every frozen Linear/Embedding weight is stored
/// in bfloat16; frozen Linears compute in bfloat16 and their outputs stay bfloat16, as under torch.autocast, so the
/// attention and MLP interiors (RoPE, attention, SwiGLU) run in bfloat16 too, while the residual stream, the norms'
/// arithmetic and the loss stay float32 (frozen embeddings hand float32 to it). Llama's RMSNorms hand their output on in
/// bfloat16 (one cast shared by the projections that read it). LoRA's A/B run in bfloat16 from their float32 weights
/// (<see cref="ForwardContext.AutocastDtype"/>, entered by the trainer around each step: <see cref="Autocast"/>). Trainable tensors, gradients and optimizer state stay float32; a trainable
/// Linear the model's code can take another module for (full fine-tuning) computes in bfloat16 from its float32 weight
/// (<see cref="AutocastLinear"/>); any other trainable Linear (adapter, head) casts its input to its weight's dtype.
/// All of this where the CPU has native bf16 arithmetic; elsewhere frozen weights are only stored in bfloat16 and every
/// computation runs in float32 (<see cref="Runtime.Bf16Policy"/>, <see cref="Bf16StoredLinear"/>).
/// </summary>
public static class Bf16Base
{
    /// <summary>Converts the frozen layers of <paramref name="root"/>; returns how many it converted.</summary>
    public static int Apply(nn.Module root)
    {
        int n = 0;
        // Only a bare model's own projections (full fine-tuning): adapters and wrappers keep their modules' types.
        bool fullModel = root is PreTrainedModel;
        // On CPUs without native bf16 arithmetic the weights are stored in bfloat16 but computed in float32 (Runtime.Bf16Policy).
        bool widen = Runtime.Bf16Policy.ComputeDtype != ScalarType.BFloat16;
        using var _ = no_grad();
        foreach (var (name, m) in root.named_modules().ToList())
        {
            if (widen)
            {
                n += StoreOnly(m);
                continue;
            }
            switch (m)
            {
                // Full fine-tuning: the model's own projections compute in bfloat16 from their float32 master weights.
                case Linear l when fullModel && l.weight!.requires_grad && ModuleSurgery.CanReplace(root, name, typeof(AutocastLinear)):
                    ModuleSurgery.Replace(root, name, new AutocastLinear(l, ScalarType.BFloat16));
                    break;
                case Linear l when !l.weight!.requires_grad && (l.bias is null || !l.bias.requires_grad):
                    l.to(ScalarType.BFloat16);
                    l.register_forward_pre_hook((_, x) => x.dtype == ScalarType.BFloat16 ? x : x.to(ScalarType.BFloat16));
                    n++;
                    break;
                case Linear l:
                    l.register_forward_pre_hook((_, x) => x.dtype == l.weight!.dtype ? x : x.to(l.weight!.dtype));
                    break;
                case Embedding e when !e.weight!.requires_grad:
                    n += StoreOnly(e);
                    break;
                case LlamaRMSNorm norm:
                    norm.OutputDtype = ScalarType.BFloat16;
                    break;
            }
        }
        return n;
    }

    /// <summary>
    /// The forward context of a bf16 step (adapters compute in bfloat16 where the CPU has native bf16 arithmetic), or null
    /// (float32 runs, and CPUs where bf16 is storage only).
    /// </summary>
    public static ForwardContext? Autocast(bool bf16) =>
        bf16 && Runtime.Bf16Policy.ComputeDtype == ScalarType.BFloat16 ? ForwardContext.Enter(autocastDtype: ScalarType.BFloat16) : null;

    /// <summary>bf16 storage, float32 arithmetic: frozen Linears widen their weight per matmul, frozen Embeddings hand float32 on.</summary>
    static int StoreOnly(nn.Module m)
    {
        switch (m)
        {
            case Linear l when !l.weight!.requires_grad && (l.bias is null || !l.bias.requires_grad):
                Bf16StoredLinear.Attach(l);
                return 1;
            case Embedding e when !e.weight!.requires_grad:
                e.to(ScalarType.BFloat16);
                e.register_forward_hook((_, x, y) => y.to(ScalarType.Float32));
                return 1;
            default:
                return 0;
        }
    }
}

/// <summary>
/// A trainable Linear under autocast: the same weight and bias Parameters (same state_dict keys), cast to the compute
/// dtype for each forward, so they keep float32 values and get float32 gradients while the matmul runs in bfloat16.
/// </summary>
public sealed class AutocastLinear : nn.Module<Tensor, Tensor>
{
    readonly Parameter weight;
    readonly Parameter? bias;
    readonly ScalarType _dtype;

    public AutocastLinear(Linear linear, ScalarType dtype) : base(nameof(AutocastLinear))
    {
        weight = linear.weight!;
        bias = linear.bias;
        _dtype = dtype;
        RegisterComponents();
    }

    public override Tensor forward(Tensor x) =>
        nn.functional.linear(x.to(_dtype), weight.to(_dtype), bias?.to(_dtype));
}
