using PeftSharp.IO;
using PeftSharp.Models;
using static TorchSharp.torch;

namespace PeftSharp.Tuners;

/// <summary>
/// peft's <c>AutoPeftModel</c>: the adapter's <c>task_type</c> decides which model class the base folder is built as
/// (SEQ_CLS onto a BertModel or BertForMaskedLM folder builds BertForSequenceClassification, the head initialized as
/// transformers initializes it and then filled from the adapter's <c>modules_to_save</c>).
/// </summary>
public static class AutoPeftModel
{
    /// <summary>Loads <paramref name="adapterDir"/> onto <paramref name="baseModel"/> (default: its base_model_name_or_path).</summary>
    public static PeftModel FromPretrained(string adapterDir, string? baseModel = null, Device? device = null, ScalarType dtype = ScalarType.Float32, bool isTrainable = false)
    {
        adapterDir = HfHubCache.ResolveFolder(adapterDir, "adapter");
        var config = PeftMethods.LoadConfig(adapterDir);
        var baseDir = baseModel ?? config.BaseModelNameOrPath
            ?? throw new PeftConfigException($"{Path.Combine(adapterDir, AdapterFiles.ConfigFile)}: no base_model_name_or_path; name the base model");
        return PeftModel.FromPretrained(LoadBase(baseDir, adapterDir, device, dtype), adapterDir, isTrainable: isTrainable);
    }

    /// <summary>
    /// The base model an adapter folder needs: built for its task_type, a classification head sized by the head the
    /// adapter saved (so a 3-label adapter works on a base whose config says 2), else by the base's config.
    /// </summary>
    public static PreTrainedModel LoadBase(string baseDir, string adapterDir, Device? device = null, ScalarType dtype = ScalarType.Float32)
    {
        var config = PeftMethods.LoadConfig(adapterDir);
        int? labels = config.TaskType == "SEQ_CLS" ? SavedHeadLabels(HfHubCache.ResolveFolder(adapterDir, "adapter")) : null;
        return AutoModel.FromPretrained(baseDir, device, dtype, task: config.TaskType, numLabels: labels);
    }

    // peft saves modules_to_save without their wrapper: base_model.model.classifier.weight (transformers' BERT head) or .score.weight.
    static int? SavedHeadLabels(string adapterDir)
    {
        var path = Path.Combine(adapterDir, AdapterFiles.WeightsFile);
        if (!File.Exists(path)) return null;
        using var file = SafetensorsFile.Open(path);
        var head = file.Entries.Values.FirstOrDefault(e => e.Name is "base_model.model.classifier.weight" or "base_model.model.score.weight" && e.Shape.Length == 2);
        return head is null ? null : checked((int)head.Shape[0]);
    }
}
