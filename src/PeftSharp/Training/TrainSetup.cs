using System.Text.Json.Nodes;
using PeftSharp.Models;
using PeftSharp.Tokenization;
using PeftSharp.Training.Data;
using PeftSharp.Tuners;
using PeftSharp.Tuners.Lora;
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
    /// <summary>Set for a 4-bit (QLoRA) base: what prepare_model_for_kbit_training did; disposed with the setup.</summary>
    public Quantization.KbitTrainingPreparation? Kbit { get; init; }

    public static TrainSetup FromConfig(TrainConfig c, Device? device = null)
    {
        var modelDir = c.ResolvePath(c.ModelNameOrPath);
        var model = AutoModel.FromPretrained(modelDir, device, quantization: c.Quantization);
        Quantization.KbitTrainingPreparation? kbit = null;
        try
        {
            if (c.Quantization is not null) kbit = Quantization.KbitTraining.Prepare(model, c.Training.GradientCheckpointing);
            var tokenizer = File.Exists(Path.Combine(modelDir, HfTokenizer.TokenizerFile)) ? HfTokenizer.FromFolder(modelDir) : null;
            var data = c.DataOptions(LabelMap(model)) with { Template = PromptTemplate.Resolve(c.Template, modelDir, tokenizer) };
            var (train, eval) = DatasetBuilder.Load(c.ResolvePath(c.Dataset), tokenizer, data);
            var target = c.FinetuningType == "full" ? TrainingTarget.Full(model) : AdapterTargets.Lora(model, c, modelDir);
            int pad = model.Config.PadTokenId ?? tokenizer?.PadTokenId ?? tokenizer?.EosTokenId ?? 0;
            target = target with { PadTokenId = pad };
            return new TrainSetup { Model = model, Tokenizer = tokenizer, Target = target, Train = train, Eval = eval, ModelDir = modelDir, Kbit = kbit };
        }
        catch { kbit?.Dispose(); model.Dispose(); throw; }
    }

    /// <summary>config.json's label2id, for string class labels.</summary>
    public static IReadOnlyDictionary<string, int>? LabelMap(PreTrainedModel model) =>
        model.Config.Raw["label2id"] is JsonObject map ? map.ToDictionary(kv => kv.Key, kv => kv.Value!.GetValue<int>()) : null;

    public void Dispose()
    {
        Kbit?.Dispose();
        Model.Dispose();
    }
}

/// <summary>Training targets for adapter methods.</summary>
public static class AdapterTargets
{
    /// <summary>Trains the PeftModel's active adapter (whatever it made trainable); saves the adapter folder.</summary>
    public static TrainingTarget Peft(PeftModel peft) => new()
    {
        Root = peft,
        Model = peft.Model,
        Save = dir => peft.SaveAdapter(dir),
        Task = TrainingTarget.TaskOf(peft.Model),
        PadTokenId = peft.Model.Config.PadTokenId ?? 0,
    };

    /// <summary>
    /// LLaMA-Factory's LoRA setup: a new adapter (lora_rank, lora_alpha = 2 × rank by default, lora_dropout, lora_target
    /// "all" = every linear layer but the output head) or, with adapter_name_or_path, an existing one made trainable.
    /// </summary>
    public static TrainingTarget Lora(PreTrainedModel model, TrainConfig c, string modelDir)
    {
        if (c.AdapterNameOrPath is { } adapter)
            return Peft(PeftModel.FromPretrained(model, c.ResolvePath(adapter), isTrainable: true));
        var names = c.LoraTarget.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
        var config = new LoraConfig
        {
            R = c.LoraRank,
            LoraAlpha = c.LoraAlpha ?? 2.0 * c.LoraRank,
            LoraDropout = c.LoraDropout,
            TargetModules = names is ["all"] ? StringOrList.Of(TargetMatcher.AllLinear) : StringOrList.Of(names),
            TaskType = model.IsCausalLM ? "CAUSAL_LM" : "SEQ_CLS",
            BaseModelNameOrPath = modelDir,
        };
        config.Validate("lora settings");
        return Peft(PeftModel.Create(model, config));
    }

    /// <summary>The model (with the adapter applied when given) for evaluation.</summary>
    public static TrainingTarget ForEval(PreTrainedModel model, string? adapterDir, HfTokenizer? tokenizer)
    {
        int pad = model.Config.PadTokenId ?? tokenizer?.PadTokenId ?? tokenizer?.EosTokenId ?? 0;
        if (adapterDir is not null) return Peft(PeftModel.FromPretrained(model, adapterDir)) with { PadTokenId = pad };
        return new TrainingTarget { Root = model, Model = model, Save = _ => { }, Task = TrainingTarget.TaskOf(model), PadTokenId = pad };
    }
}
