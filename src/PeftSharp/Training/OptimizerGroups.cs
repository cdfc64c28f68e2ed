using System.Text.RegularExpressions;
using TorchSharp;
using static TorchSharp.torch;

namespace PeftSharp.Training;

/// <summary>How the trainable parameters are grouped for AdamW: HF Trainer's decay/no-decay split, or LoRA+.</summary>
public static class OptimizerGroups
{
    // transformers' get_decay_parameter_names: no decay for biases and norm weights (matched by name, lowercased).
    static readonly Regex[] NoDecayPatterns =
    {
        new("bias"), new("layernorm"), new("rmsnorm"), new(@"(?:^|\.)norm(?:$|\.)"), new(@"_norm(?:$|\.)"),
    };

    /// <summary>Trainable (requires_grad) parameters of <paramref name="root"/>, in registration order.</summary>
    public static List<(string Name, Tensor Param)> Trainable(nn.Module root) =>
        root.named_parameters().Where(p => p.parameter.requires_grad).Select(p => (p.name, (Tensor)p.parameter)).ToList();

    /// <summary>True when HF would apply weight decay to this parameter (not in a LayerNorm, not a bias or norm by name).</summary>
    public static bool Decays(string name, ISet<string> layerNormParams) =>
        !layerNormParams.Contains(name) && !NoDecayPatterns.Any(p => p.IsMatch(name.ToLowerInvariant()));

    static HashSet<string> LayerNormParams(nn.Module root) =>
        root.named_modules().Where(m => m.module is TorchSharp.Modules.LayerNorm)
            .SelectMany(m => m.module.named_parameters().Select(p => m.name.Length == 0 ? p.name : $"{m.name}.{p.name}"))
            .ToHashSet();

    /// <summary>Trainer.create_optimizer: [decay (weight_decay), no_decay (0)].</summary>
    public static List<ParamGroup> Default(nn.Module root, double lr, double weightDecay)
    {
        var ln = LayerNormParams(root);
        var trainable = Trainable(root);
        return new List<ParamGroup>
        {
            new() { Name = "decay", Params = trainable.Where(p => Decays(p.Name, ln)).ToList(), BaseLr = lr, WeightDecay = weightDecay },
            new() { Name = "no_decay", Params = trainable.Where(p => !Decays(p.Name, ln)).ToList(), BaseLr = lr, WeightDecay = 0 },
        };
    }

    /// <summary>
    /// peft's create_loraplus_optimizer: [groupA (lr), embedding (lrEmbedding), groupB (lr·ratio), groupB_no_decay
    /// (lr·ratio, wd 0)]. groupB = names with lora_B or 1-D tensors; LoRA embedding A/B go to the embedding group.
    /// </summary>
    public static List<ParamGroup> LoraPlus(nn.Module root, double lr, double ratio, double weightDecay, double lrEmbedding)
    {
        var ln = LayerNormParams(root);
        var a = new List<(string, Tensor)>(); var emb = new List<(string, Tensor)>();
        var b = new List<(string, Tensor)>(); var bNoDecay = new List<(string, Tensor)>();
        foreach (var (name, p) in Trainable(root))
        {
            if (name.Contains("lora_embedding_A") || name.Contains("lora_embedding_B")) emb.Add((name, p));
            else if (name.Contains("lora_B") || p.dim() == 1) (Decays(name, ln) ? b : bNoDecay).Add((name, p));
            else a.Add((name, p));
        }
        return new List<ParamGroup>
        {
            new() { Name = "groupA", Params = a, BaseLr = lr, WeightDecay = weightDecay },
            new() { Name = "embedding", Params = emb, BaseLr = lrEmbedding, WeightDecay = weightDecay },
            new() { Name = "groupB", Params = b, BaseLr = lr * ratio, WeightDecay = weightDecay },
            new() { Name = "groupB_no_decay", Params = bNoDecay, BaseLr = lr * ratio, WeightDecay = 0 },
        };
    }
}
