using PeftSharp.Models;
using TorchSharp;
using static TorchSharp.torch;

namespace PeftSharp.Training;

/// <summary>
/// Reentrant gradient checkpointing (torch.utils.checkpoint with use_reentrant=True): a block's forward runs without
/// keeping activations; backward re-runs it with the RNG state it first saw and back-propagates through the rerun.
/// </summary>
public static class GradientCheckpointing
{
    /// <summary>Turns checkpointing on for every block of <paramref name="model"/>; throws for architectures without the seam.</summary>
    public static void Enable(PreTrainedModel model)
    {
        if (!model.SupportsBlockRunner)
            throw new PeftConfigException($"gradient_checkpointing is not supported for model_type '{model.Config.ModelType}' yet (supported: llama, qwen2, mistral)");
        model.BlockRunner = Run;
    }

    public static void Disable(PreTrainedModel model) => model.BlockRunner = null;

    /// <summary>Runs <paramref name="block"/> on <paramref name="hidden"/> under checkpointing when grad mode is on.</summary>
    public static Tensor Run(Func<Tensor, Tensor> block, Tensor hidden)
    {
        if (!is_grad_enabled()) return block(hidden);
        // As peft's enable_input_require_grads: without a grad-requiring input the function's backward never runs,
        // and adapters inside the block (frozen embeddings below them) would get no gradient.
        var input = hidden.requires_grad ? hidden : hidden.detach().requires_grad_(true);
        var y = CheckpointFunction.apply(input, block);
        CustomFunctionMemory.Release();
        return y;
    }

    sealed class CheckpointFunction : autograd.SingleTensorFunction<CheckpointFunction>
    {
        public override string Name => nameof(CheckpointFunction);

        public override Tensor forward(autograd.AutogradContext ctx, params object[] vars)
        {
            var x = (Tensor)vars[0];
            var block = (Func<Tensor, Tensor>)vars[1];
            ctx.save_for_backward(new List<Tensor> { x });
            ctx.save_data("block", block);
            // As bytes: TorchSharp warns for every tensor kept in ctx data (only save_for_backward should hold tensors).
            using (var rng = get_rng_state()) ctx.save_data("rng", rng.data<byte>().ToArray());
            var y = block(x);
            CustomFunctionMemory.Track(ctx);
            return y;
        }

        public override List<Tensor> backward(autograd.AutogradContext ctx, Tensor gradOutput)
        {
            var x = ctx.get_saved_variables()[0];
            var block = (Func<Tensor, Tensor>)ctx.get_data("block");
            using var rng = tensor((byte[])ctx.get_data("rng"));
            using var current = get_rng_state();
            Tensor inputGrad;
            using (enable_grad())
            using (var scope = NewDisposeScope())
            {
                set_rng_state(rng);
                var xd = x.detach().requires_grad_(true);
                var y = block(xd);
                autograd.backward(new[] { y }, new[] { gradOutput });
                inputGrad = (xd.grad ?? zeros_like(x)).detach().clone().MoveToOuterDisposeScope();
            }
            set_rng_state(current);
            return new List<Tensor> { inputGrad, null! };
        }
    }
}
