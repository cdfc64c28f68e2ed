using PeftSharp.Models;
using PeftSharp.Training;
using PeftSharp.Tuners;
using PeftSharp.Tuners.Lora;

namespace PeftSharp.Cli.Quickstart;

/// <summary>How the quickstart fine-tunes (LoRA r=16 on every linear layer) and merges.</summary>
public static class QuickstartFineTune
{
    public static (TrainingTarget Target, PeftModel Peft, string Method) Target(PreTrainedModel model, string baseDir)
    {
        var config = new LoraConfig
        {
            R = 16, LoraAlpha = 32, TargetModules = StringOrList.Of(TargetMatcher.AllLinear), TaskType = "CAUSAL_LM", BaseModelNameOrPath = baseDir,
        };
        var peft = PeftModel.Create(model, config);
        return (AdapterTargets.Peft(peft), peft, "LoRA (r=16, alpha=32, all linear layers)");
    }

    /// <summary>Folds the adapter into the base weights and writes a plain HF model folder.</summary>
    public static PreTrainedModel Merge(PeftModel peft, string dir)
    {
        var merged = peft.MergeAndUnload();
        AutoModel.SavePretrained(merged, dir);
        return merged;
    }
}
