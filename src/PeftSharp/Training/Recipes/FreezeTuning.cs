using System.Text.RegularExpressions;
using PeftSharp.Models;

namespace PeftSharp.Training.Recipes;

/// <summary>
/// LLaMA-Factory's freeze tuning: full fine-tuning of the last (freeze_trainable_layers &gt; 0) or first (&lt; 0) n decoder
/// layers, restricted to freeze_trainable_modules inside them ("all" or names such as self_attn, mlp), plus
/// freeze_extra_modules outside the layers (embed_tokens, norm, lm_head); with use_llama_pro the layers a LLaMA Pro
/// expansion added. Everything else is frozen; the whole model is saved.
/// </summary>
public static partial class FreezeTuning
{
    [GeneratedRegex(@"\.\d+\.")]
    private static partial Regex LayerIndex();

    public static TrainingTarget Target(PreTrainedModel model, FreezeSettings s)
    {
        int layers = model.Config.NumHiddenLayers;
        string src = s.Source;
        if (layers <= 0) throw new PeftConfigException($"{src}: finetuning_type freeze: the model config has no num_hidden_layers");
        if (s.TrainableLayers == 0) throw new PeftConfigException($"{src}: freeze_trainable_layers is 0; expected the number of last (> 0) or first (< 0) layers to train");
        IEnumerable<int> ids;
        if (s.UseLlamaPro)
        {
            // LLaMA Pro's expansion put one new layer after each block of layers / n; those are the ones that train.
            if (s.TrainableLayers < 0 || layers % s.TrainableLayers != 0)
                throw new PeftConfigException($"{src}: use_llama_pro needs freeze_trainable_layers to divide the model's {layers} layers (it is {s.TrainableLayers})");
            int stride = layers / s.TrainableLayers;
            ids = Enumerable.Range(0, s.TrainableLayers).Select(k => stride - 1 + k * stride);
        }
        else ids = s.TrainableLayers > 0 ? Enumerable.Range(Math.Max(0, layers - s.TrainableLayers), Math.Min(layers, s.TrainableLayers))
            : Enumerable.Range(0, Math.Min(-s.TrainableLayers, layers));
        var names = model.named_parameters().Select(p => p.name).ToList();
        // As LLaMA-Factory: module names inside layer 0 (or 1), and the parents of parameters outside any layer.
        var hidden = names.Where(n => n.Contains(".0.") || n.Contains(".1.")).Select(n => n.Split(n.Contains(".0.") ? ".0." : ".1.")[^1].Split('.')[0]).ToHashSet();
        var outside = names.Where(n => !LayerIndex().IsMatch(n)).Select(n => n.Split('.') is var parts && parts.Length >= 2 ? parts[^2] : parts[0]).ToHashSet();
        var trainable = new List<string>();
        foreach (var module in s.TrainableModules)
        {
            if (module != "all" && !hidden.Contains(module))
                throw new PeftConfigException($"{src}: freeze_trainable_modules: module '{module}' is not found; choose from {string.Join(", ", hidden.Order())}");
            trainable.AddRange(ids.Select(i => $".{i}.{(module == "all" ? "" : module)}"));
        }
        foreach (var module in s.ExtraModules)
        {
            if (!outside.Contains(module))
                throw new PeftConfigException($"{src}: freeze_extra_modules: module '{module}' is not found; choose from {string.Join(", ", outside.Order())}");
            trainable.Add(module);
        }
        var target = TrainingTarget.Full(model);
        foreach (var (name, p) in model.named_parameters())
            p.requires_grad = trainable.Any(t => name.Contains(t, StringComparison.Ordinal));
        return target;
    }
}
