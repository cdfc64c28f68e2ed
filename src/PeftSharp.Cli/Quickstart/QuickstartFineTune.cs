using PeftSharp.Models;
using PeftSharp.Training;

namespace PeftSharp.Cli.Quickstart;

/// <summary>How the quickstart fine-tunes and merges.</summary>
public static class QuickstartFineTune
{
    public static (TrainingTarget Target, string Method) Target(PreTrainedModel model) =>
        (TrainingTarget.Full(model), "full fine-tuning");

    /// <summary>Writes the fine-tuned model as a HF folder and loads it back (the "merged" model users ship).</summary>
    public static PreTrainedModel Merge(PreTrainedModel model, TrainingTarget target, string dir)
    {
        AutoModel.SavePretrained(model, dir);
        return AutoModel.FromPretrained(dir);
    }
}
