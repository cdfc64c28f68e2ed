using PeftSharp.Models;

namespace PeftSharp.Training.Data;

/// <summary>Class-labelled rows need a model with a classification head whose size covers every label.</summary>
public static class ClassificationData
{
    public static void RequireHead(PreTrainedModel model, string modelDir, string dataset, IEnumerable<TrainExample> rows)
    {
        var labels = rows.Where(r => r.ClassLabel is not null).Select(r => r.ClassLabel!.Value).ToList();
        if (labels.Count == 0) return;
        var architecture = model.Config.Architectures is { Length: > 0 } a ? a[0] : model.GetType().Name;
        if (model.NumLabels is not int n)
            throw new PeftConfigException(model.IsCausalLM
                ? $"{dataset}: rows have class labels ('label'), but {modelDir} is a causal LM ({architecture}); classification needs an encoder with a classification head"
                : $"{dataset}: rows have class labels ('label'), but {modelDir} is a {architecture} without a classification head; use a folder whose config.json " +
                  "names the ...ForSequenceClassification class in 'architectures' with its labels in id2label (transformers' AutoModelForSequenceClassification writes one)");
        int max = labels.Max();
        if (max >= n)
            throw new PeftConfigException($"{dataset}: class label {max} is outside the {n} labels of {modelDir}'s classification head (config.json id2label / num_labels)");
    }
}
