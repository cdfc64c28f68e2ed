using PeftSharp.Models;
using TorchSharp;
using static TorchSharp.torch;

namespace PeftSharp.Quantization;

/// <summary>What <see cref="KbitTraining.Prepare"/> did; dispose it to remove the input-gradient hook.</summary>
public sealed class KbitTrainingPreparation : IDisposable
{
    Action? _removeHook;

    internal KbitTrainingPreparation(IReadOnlyList<string> cast, Action? removeHook, bool gradientCheckpointing)
    {
        CastToFloat32 = cast;
        _removeHook = removeHook;
        GradientCheckpointing = gradientCheckpointing;
    }

    /// <summary>Parameters that were float16/bfloat16 and are float32 now.</summary>
    public IReadOnlyList<string> CastToFloat32 { get; }

    /// <summary>True when the caller asked for gradient checkpointing; the trainer turns it on for the model's blocks.</summary>
    public bool GradientCheckpointing { get; }

    public bool InputGradientsEnabled => _removeHook is not null;

    public void Dispose()
    {
        _removeHook?.Invoke();
        _removeHook = null;
    }
}

/// <summary>
/// peft's <c>prepare_model_for_kbit_training</c>, for a model with 4-bit layers, before the adapters are added:
/// freezes every parameter, casts the float16/bfloat16 ones (norms, embeddings, the output layer, biases) to
/// float32 — the packed 4-bit weights are uint8 buffers and stay as they are — and, with gradient checkpointing,
/// makes the input embeddings' output require grad (transformers' <c>enable_input_require_grads</c>) so checkpointed
/// blocks see an input that needs a gradient even though the embedding itself is frozen.
/// </summary>
public static class KbitTraining
{
    public static KbitTrainingPreparation Prepare(PreTrainedModel model, bool useGradientCheckpointing = true)
    {
        foreach (var p in model.parameters()) p.requires_grad = false;

        var cast = new List<string>();
        foreach (var (name, module) in model.named_modules().ToList())
        {
            var half = module.named_parameters(recurse: false).Where(p => p.parameter.dtype is ScalarType.Float16 or ScalarType.BFloat16).ToList();
            if (half.Count == 0) continue;
            // Module.to(float32) touches floating tensors only; this module's own parameters are replaced, then refrozen.
            module.to(ScalarType.Float32);
            foreach (var (pn, p) in module.named_parameters(recurse: false))
            {
                p.requires_grad = false;
                if (half.Any(h => h.name == pn)) cast.Add(name.Length == 0 ? pn : $"{name}.{pn}");
            }
        }

        Action? hook = null;
        if (useGradientCheckpointing)
        {
            var remover = model.InputEmbeddings.register_forward_hook((_, _, output) => output.requires_grad_(true));
            hook = remover.remove;
        }
        return new KbitTrainingPreparation(cast, hook, useGradientCheckpointing);
    }
}
