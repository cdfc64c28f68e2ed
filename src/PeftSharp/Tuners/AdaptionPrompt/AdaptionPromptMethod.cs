using System.Text.Json.Nodes;
using PeftSharp.Models;
using static TorchSharp.torch;

namespace PeftSharp.Tuners.AdaptionPrompt;

/// <summary>
/// LLaMA-Adapter (peft's adaption prompt): the last <c>adapter_layers</c> attention modules named
/// <c>target_modules</c> are wrapped in <see cref="AdaptedAttention"/>.
/// </summary>
public sealed class AdaptionPromptMethod : IPeftMethod
{
    public string PeftType => "ADAPTION_PROMPT";

    public IReadOnlyList<Recipe> Recipes { get; } = new[] { PromptLearning.PromptFamily.Recipe("llama_adapter") };
    /// <summary>Its gated prompts feed attention, not the weights: no merge, no mixed batches.</summary>
    public MethodCapabilities Capabilities { get; } = new() { Merge = false };
    public IReadOnlyList<BenchEntry> Bench { get; } = new[] { PromptLearning.PromptFamily.Bench("LLaMA-Adapter", "llama_adapter", 1e-2) };

    /// <summary>peft's supported model types and their attention module names (peft also has gpt2, not ported here).</summary>
    static readonly Dictionary<string, string> DefaultTargets = new() { ["llama"] = "self_attn", ["mistral"] = "self_attn" };

    public PeftConfig ParseConfig(JsonObject json, string source) => AdaptionPromptConfig.FromJson(json, source);

    static AdaptionPromptConfig Cast(PeftConfig c) => c as AdaptionPromptConfig ?? throw new PeftConfigException($"ADAPTION_PROMPT expects an AdaptionPromptConfig; got {c.GetType().Name}");

    public PeftConfig Prepare(PreTrainedModel model, PeftConfig config)
    {
        var c = Cast(config);
        c.Validate();
        var type = model.Config.ModelType;
        if (!DefaultTargets.TryGetValue(type, out var target))
            throw new PeftConfigException($"ADAPTION_PROMPT supports model types {string.Join(", ", DefaultTargets.Keys)}; the model is '{type}'");
        c = c with { TargetModules = c.TargetModules ?? target };
        int found = Targets(model, c).Count;
        if (c.AdapterLayers > found)
            throw new PeftConfigException($"ADAPTION_PROMPT: adapter_layers {c.AdapterLayers} is more than the {found} '{c.TargetModules}' modules of the model");
        return c;
    }

    // Every module whose name ends with ".<target_modules>", in model order.
    static List<(string Name, nn.Module Module)> Targets(PreTrainedModel model, AdaptionPromptConfig c) =>
        model.named_modules().Where(m => m.name.EndsWith("." + c.TargetModules, StringComparison.Ordinal)).Select(m => (m.name, m.module)).ToList();

    /// <summary>An [adapter_len, hidden] prompt and a gate per adapted layer.</summary>
    public long AdapterElements(PreTrainedModel model, PeftConfig config)
    {
        var c = Cast(config);
        return AdapterSize.Mul(c.AdapterLayers, AdapterSize.Mul(c.AdapterLen, model.Config.HiddenSize) + 1);
    }

    public IReadOnlyList<string> Inject(PreTrainedModel model, PeftConfig config, string adapterName)
    {
        var c = Cast(config);
        var targets = Targets(model, c);
        var chosen = targets.Skip(targets.Count - c.AdapterLayers).ToList();
        foreach (var (name, module) in chosen)
        {
            var wrapper = module switch
            {
                AdaptedAttention existing => existing,
                LlamaAttention attention => new AdaptedAttention(attention),
                _ => throw new PeftSharpException($"ADAPTION_PROMPT cannot wrap {name} ({module.GetType().Name}); it needs a Llama-family attention"),
            };
            wrapper.AddAdapter(adapterName, c.AdapterLen, model.Config.HiddenSize, !c.InferenceMode);
            if (!ReferenceEquals(wrapper, module)) ModuleSurgery.Replace(model, name, wrapper);
        }
        return chosen.Select(t => t.Name).ToList();
    }
}
