using System.Text.Json.Nodes;
using PeftSharp.Models;
using PeftSharp.Tokenization;
using PeftSharp.Training.Data;
using static TorchSharp.torch;

namespace PeftSharp.Training;

/// <summary>Everything a <see cref="TrainConfig"/> names, loaded: model (with adapter for LoRA), tokenizer, datasets and the training target.</summary>
public sealed class TrainSetup : IDisposable
{
    public required PreTrainedModel Model { get; init; }
    public HfTokenizer? Tokenizer { get; init; }
    public required TrainingTarget Target { get; init; }
    public required List<TrainExample> Train { get; init; }
    public required List<TrainExample> Eval { get; init; }
    public required string ModelDir { get; init; }

    public static TrainSetup FromConfig(TrainConfig c, Device? device = null)
    {
        var modelDir = c.ResolvePath(c.ModelNameOrPath);
        var model = AutoModel.FromPretrained(modelDir, device);
        try
        {
            var tokenizer = File.Exists(Path.Combine(modelDir, HfTokenizer.TokenizerFile)) ? HfTokenizer.FromFolder(modelDir) : null;
            var data = c.DataOptions(LabelMap(model)) with { Template = PromptTemplate.Resolve(c.Template, modelDir, tokenizer) };
            var (train, eval) = DatasetBuilder.Load(c.ResolvePath(c.Dataset), tokenizer, data);
            var target = c.FinetuningType == "full" ? TrainingTarget.Full(model) : AdapterTargets.Lora(model, c, modelDir);
            int pad = model.Config.PadTokenId ?? tokenizer?.PadTokenId ?? tokenizer?.EosTokenId ?? 0;
            target = target with { PadTokenId = pad };
            return new TrainSetup { Model = model, Tokenizer = tokenizer, Target = target, Train = train, Eval = eval, ModelDir = modelDir };
        }
        catch { model.Dispose(); throw; }
    }

    /// <summary>config.json's label2id, for string class labels.</summary>
    public static IReadOnlyDictionary<string, int>? LabelMap(PreTrainedModel model) =>
        model.Config.Raw["label2id"] is JsonObject map ? map.ToDictionary(kv => kv.Key, kv => kv.Value!.GetValue<int>()) : null;

    public void Dispose() => Model.Dispose();
}

/// <summary>Training targets for adapter methods (filled in as tuners land).</summary>
public static class AdapterTargets
{
    public static TrainingTarget Lora(PreTrainedModel model, TrainConfig c, string modelDir) =>
        throw new PeftConfigException("finetuning_type 'lora' needs the LoRA tuner, which is not in this build yet; use finetuning_type: full");

    /// <summary>The model (with the adapter applied when given) for evaluation.</summary>
    public static TrainingTarget ForEval(PreTrainedModel model, string? adapterDir, HfTokenizer? tokenizer)
    {
        if (adapterDir is not null) throw new PeftConfigException("--adapter needs the LoRA tuner, which is not in this build yet");
        return new TrainingTarget
        {
            Root = model, Model = model, Save = _ => { }, Task = TrainingTarget.TaskOf(model),
            PadTokenId = model.Config.PadTokenId ?? tokenizer?.PadTokenId ?? tokenizer?.EosTokenId ?? 0,
        };
    }
}
