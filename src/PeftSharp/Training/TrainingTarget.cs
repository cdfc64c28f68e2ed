using PeftSharp.Models;
using TorchSharp;
using static TorchSharp.torch;

namespace PeftSharp.Training;

public enum TrainingTask { CausalLM, SequenceClassification }

/// <summary>
/// What a <see cref="Trainer"/> trains: the module whose requires_grad parameters it optimizes and checkpoints
/// (a PeftModel, or the model itself for full fine-tuning), the model that runs the forward, and how to write the
/// deliverable (an adapter folder or a HF model folder).
/// </summary>
public sealed record TrainingTarget
{
    public required nn.Module Root { get; init; }
    public required PreTrainedModel Model { get; init; }
    /// <summary>Writes the trained result into a folder (adapter or full model).</summary>
    public required Action<string> Save { get; init; }
    public TrainingTask Task { get; init; } = TrainingTask.CausalLM;
    public int PadTokenId { get; init; }
    /// <summary>The method's own optimizer (LoRA-FA's projected-gradient one), built from the run's arguments; null: AdamW (or optim) over the trainable parameters.</summary>
    public Func<TrainingArguments, IOptimizer>? CreateOptimizer { get; init; }
    /// <summary>Method hooks the trainer calls after every optimizer step (AdaLoRA's rank allocator, Delta-LoRA's W update, robust AdapterDrop); disposed with the setup that made them.</summary>
    public IReadOnlyList<ITrainingCallback> Callbacks { get; init; } = Array.Empty<ITrainingCallback>();
    /// <summary>Applied to each training forward's loss, as the method's forward does in peft (AdaLoRA adds its orthogonality term).</summary>
    public Func<Tensor, Tensor>? LossTerm { get; init; }

    public Device Device => Model.Device;

    /// <summary>The forward training and evaluation run: the PeftModel's when the root is one (prompt-family adapters change the inputs), else the model's.</summary>
    public ModelOutput Forward(ModelInputs inputs) => Root is Tuners.PeftModel peft ? peft.Forward(inputs) : Model.Forward(inputs);

    /// <summary>Causal-LM labels aligned with <see cref="Forward"/>'s output (-100 in front of Prompt Tuning / P-Tuning's virtual positions).</summary>
    public Tensor LmLabels(Tensor labels) => Root is Tuners.PeftModel peft ? peft.ExtendLabels(labels) : labels;

    /// <summary>Full fine-tuning: every parameter of <paramref name="model"/> trains; saves a HF model folder.</summary>
    public static TrainingTarget Full(PreTrainedModel model)
    {
        foreach (var p in model.parameters()) p.requires_grad = true;
        return new TrainingTarget
        {
            Root = model,
            Model = model,
            Save = dir => AutoModel.SavePretrained(model, dir),
            Task = TaskOf(model),
            PadTokenId = model.Config.PadTokenId ?? 0,
        };
    }

    public static TrainingTask TaskOf(PreTrainedModel model) =>
        model.IsCausalLM ? TrainingTask.CausalLM : TrainingTask.SequenceClassification;

    public (long Trainable, long All) ParameterCounts()
    {
        long trainable = 0, all = 0;
        foreach (var p in Root.parameters()) { all += p.numel(); if (p.requires_grad) trainable += p.numel(); }
        return (trainable, all);
    }
}
