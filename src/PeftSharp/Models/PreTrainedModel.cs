using TorchSharp;
using static TorchSharp.torch;

namespace PeftSharp.Models;

/// <summary>Runs one transformer block <paramref name="block"/> on <paramref name="hidden"/> (a seam for gradient checkpointing).</summary>
public delegate Tensor BlockRunner(Func<Tensor, Tensor> block, Tensor hidden);

/// <summary>
/// Base of every architecture. Module and parameter names equal the HF checkpoint keys, so loading is a
/// name map (<see cref="WeightLoader"/>). Child layers are typed <c>Module&lt;Tensor,Tensor&gt;</c> so tuners
/// can swap them for wrappers.
/// </summary>
public abstract class PreTrainedModel : nn.Module, ILanguageModel
{
    /// <summary>
    /// Runs each transformer block (block function, hidden state) instead of a plain call; the trainer sets it for
    /// gradient checkpointing. Only architectures with <see cref="SupportsBlockRunner"/> use it.
    /// </summary>
    public BlockRunner? BlockRunner { get; set; }

    /// <summary>True when the forward passes every block through <see cref="BlockRunner"/>.</summary>
    public virtual bool SupportsBlockRunner => false;

    protected PreTrainedModel(string name, ModelConfig config) : base(name) => Config = config;

    public ModelConfig Config { get; }

    /// <summary>True for decoder LMs that generate (Llama family, GPT-2).</summary>
    public abstract bool IsCausalLM { get; }

    /// <summary>The token embedding (the seam prompt methods use to build inputs embeds).</summary>
    public abstract nn.Module<Tensor, Tensor> InputEmbeddings { get; }

    /// <summary>Checkpoint keys the model may lack because they are tied to another weight.</summary>
    public virtual IReadOnlyCollection<string> TiedKeys => Array.Empty<string>();

    /// <summary>Classes of a sequence-classification head; null for models without one (LMs, the bare encoder).</summary>
    public virtual int? NumLabels => null;

    /// <summary>
    /// Keys of a task head a checkpoint may lack (saved from the bare model or another head): like transformers, the
    /// loader keeps their fresh initialization and warns instead of failing.
    /// </summary>
    public virtual bool IsTaskHeadKey(string key) => false;

    /// <summary>transformers' base_model_prefix (the backbone's name inside a task model), for loading base checkpoints into task models and back.</summary>
    public virtual string? BaseModelPrefix => null;

    /// <summary>Key/value heads and head size, for building caches and prefixes.</summary>
    public abstract (int KvHeads, int HeadDim) KvShape { get; }

    public abstract ModelOutput Forward(ModelInputs inputs);

    public ModelOutput Forward(Tensor inputIds, Tensor? attentionMask = null, Tensor? tokenTypeIds = null) =>
        Forward(new ModelInputs { InputIds = inputIds, AttentionMask = attentionMask, TokenTypeIds = tokenTypeIds });

    public KVCache NewCache() => new(Config.NumHiddenLayers);

    public Device Device => parameters().First().device;
    public ScalarType DType => parameters().First().dtype;

    public long ParameterCount() => parameters().Sum(p => p.numel());
}
