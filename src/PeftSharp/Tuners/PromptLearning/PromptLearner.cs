using PeftSharp.Models;
using TorchSharp;
using static TorchSharp.torch;

namespace PeftSharp.Tuners.PromptLearning;

/// <summary>
/// The trainable part of a prompt-learning adapter (peft's prompt encoder): it changes a forward's inputs
/// instead of replacing modules. <see cref="PeftModel"/> runs the active adapter's learner around the base
/// forward, so training, generation and saving are the same for every prompt method.
/// </summary>
public abstract class PromptLearner : nn.Module
{
    protected PromptLearner(string name, PromptLearningConfig config) : base(name) => Config = config;

    public PromptLearningConfig Config { get; }

    /// <summary>Positions the output gains in front of the input (the virtual tokens), 0 when the prompt lives in the KV cache.</summary>
    public abstract int OutputVirtualPositions { get; }

    /// <summary>What peft saves as <c>prompt_embeddings</c>: the reparameterized output (training) or the table (inference).</summary>
    public abstract Tensor PromptEmbeddings();

    /// <summary>Copies a saved <c>prompt_embeddings</c> into the learner; only an inference-form learner (a plain table) accepts it.</summary>
    public abstract void LoadPromptEmbeddings(Tensor value, string source);

    /// <summary>Runs <paramref name="model"/> with the prompt applied to <paramref name="inputs"/>.</summary>
    public abstract ModelOutput Forward(PreTrainedModel model, ModelInputs inputs);

    /// <summary>Labels for a causal-LM loss over this learner's output: -100 (ignored) at the virtual positions.</summary>
    public Tensor ExtendLabels(Tensor labels)
    {
        if (OutputVirtualPositions == 0) return labels.alias();
        var pad = full(labels.shape[0], OutputVirtualPositions, -100L, labels.dtype, labels.device);
        return cat(new[] { pad, labels }, 1);
    }

    /// <summary>The attention mask with <paramref name="virtualTokens"/> leading ones (peft prepends them for every prompt method).</summary>
    protected internal static Tensor? ExtendMask(Tensor? mask, long virtualTokens)
    {
        if (mask is null) return null;
        var ones = torch.ones(mask.shape[0], virtualTokens, mask.dtype, mask.device);
        return cat(new[] { ones, mask }, 1);
    }

    /// <summary>Loads a table-form value with a shape check naming the file.</summary>
    protected static void CopyInto(Tensor target, Tensor value, string source)
    {
        if (!target.shape.SequenceEqual(value.shape))
            throw new PeftFormatException(source, $"'prompt_embeddings' has shape [{string.Join(", ", value.shape)}], the adapter config needs [{string.Join(", ", target.shape)}]");
        using var _ = no_grad();
        target.copy_(value);
    }
}

/// <summary>
/// Prompt Tuning and P-Tuning: virtual-token embeddings are prepended to the input embeddings, so the output has
/// num_virtual_tokens extra leading positions. As in peft, position ids are dropped (positions run over virtual
/// and real tokens), token type ids get zeros in front, and the attention mask gets ones in front. In a generation
/// step after the first (the cache already holds the prompt) only the mask is extended.
/// </summary>
public abstract class VirtualTokenLearner : PromptLearner
{
    protected VirtualTokenLearner(string name, PromptLearningConfig config) : base(name, config) { }

    public override int OutputVirtualPositions => Config.NumVirtualTokens;

    /// <summary>The virtual-token vectors [num_virtual_tokens, token_dim] (with gradients while training).</summary>
    protected abstract Tensor Prompts();

    public override Tensor PromptEmbeddings() => Prompts();

    /// <summary>The first num_virtual_tokens prompt vectors as the forward uses them (with gradients while training).</summary>
    public Tensor VirtualTokens() => Prompts().narrow(0, 0, Config.NumVirtualTokens);

    public override ModelOutput Forward(PreTrainedModel model, ModelInputs inputs)
    {
        using var scope = NewDisposeScope();
        int nvt = Config.NumVirtualTokens;
        bool cached = inputs.Cache is { SeqLength: > 0 };
        var embeds = inputs.InputsEmbeds;
        var tokenTypes = inputs.TokenTypeIds;
        if (!cached)
        {
            embeds ??= model.InputEmbeddings.call(inputs.InputIds!);
            var prompts = VirtualTokens().to(embeds.dtype, embeds.device).unsqueeze(0).expand(embeds.shape[0], -1, -1);
            embeds = cat(new[] { prompts, embeds }, 1);
            if (tokenTypes is not null)
                tokenTypes = cat(new[] { zeros(tokenTypes.shape[0], nvt, tokenTypes.dtype, tokenTypes.device), tokenTypes }, 1);
        }
        var output = model.Forward(new ModelInputs
        {
            InputIds = cached ? inputs.InputIds : null,
            InputsEmbeds = cached ? inputs.InputsEmbeds : embeds,
            AttentionMask = ExtendMask(inputs.AttentionMask, nvt),
            TokenTypeIds = tokenTypes,
            Cache = inputs.Cache,
            OutputHiddenStates = inputs.OutputHiddenStates,
        });
        return OutputScope.MoveOut(output);
    }

}

static class OutputScope
{
    /// <summary>Moves every tensor of an output out of the current dispose scope once (outputs share tensors, e.g. BERT's logits and last hidden state).</summary>
    internal static ModelOutput MoveOut(ModelOutput o)
    {
        var moved = new HashSet<Tensor>(ReferenceEqualityComparer.Instance);
        Tensor? Out(Tensor? t)
        {
            if (t is not null && moved.Add(t)) t.MoveToOuterDisposeScope();
            return t;
        }
        return new ModelOutput
        {
            Logits = Out(o.Logits)!,
            LastHiddenState = Out(o.LastHiddenState),
            PooledOutput = Out(o.PooledOutput),
            HiddenStates = o.HiddenStates?.Select(h => Out(h)!).ToList(),
        };
    }
}
