using PeftSharp.Models;
using PeftSharp.Training;
using PeftSharp.Tuners;

namespace PeftSharp.Cli.Quickstart;

/// <summary>
/// How the quickstart fine-tunes and merges: LoRA r=16 on every linear layer (the default) or full fine-tuning
/// (<c>--method full</c>, the baseline). Reversal needs new attention patterns: LoRA sits on a loss plateau (0.3-0.7)
/// for a few hundred steps and then drops, so it gets 1200 steps at lr 5e-3 (on four hard seeds 3e-3 left two on the
/// plateau, 4e-3 one, as 5e-3 did); full fine-tuning gets there in 400 at 2e-3.
/// </summary>
public static class QuickstartFineTune
{
    public static (TrainingTarget Target, PeftModel? Peft, string Method, double Lr, int Steps) Target(PreTrainedModel model, string baseDir, string method)
    {
        if (method == "full") return (TrainingTarget.Full(model), null, "full fine-tuning", 2e-3, 400);
        if (method != "lora") throw new ArgumentException($"--method {method}: expected full or lora");
        // The adapter `peft train` builds for finetuning_type lora with these keys.
        var settings = new RecipeSettings { LoraRank = 16, LoraAlpha = 32, LoraTarget = "all" };
        var config = PeftMethods.Recipe(method).Recipe.Config(new RecipeContext { Model = model, ModelDir = baseDir, Settings = settings });
        var peft = PeftModel.Create(model, config);
        return (AdapterTargets.Peft(peft), peft, "LoRA (r=16, alpha=32, all linear layers)", 5e-3, 1200);
    }

    /// <summary>Writes the fine-tuned model as a plain HF folder (LoRA: folded into the base weights first).</summary>
    public static PreTrainedModel Merge(PreTrainedModel model, PeftModel? peft, string dir)
    {
        var merged = peft?.MergeAndUnload() ?? model;
        AutoModel.SavePretrained(merged, dir);
        return merged;
    }
}
