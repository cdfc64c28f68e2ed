using PeftSharp.Models;
using PeftSharp.Tuners.PromptLearning;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;
using static TorchSharp.torch.nn;

namespace PeftSharp.Tuners.PrefixTuning;

/// <summary>
/// peft's <c>PrefixEncoder</c>: the prefix [nvt, num_layers·2·token_dim], either a plain table or (prefix_projection,
/// training) <c>embedding</c> [nvt, token_dim] → <c>transform</c> Linear-Tanh-Linear. Viewed as [nvt, 2L, heads,
/// head_dim], slice 2i holds layer i's keys and 2i+1 its values; they seed the KV cache, so the real tokens attend to
/// them, start at position nvt, and the output has no extra positions.
/// </summary>
public sealed class PrefixEncoder : PromptLearner
{
    readonly Embedding embedding;
    readonly Module<Tensor, Tensor>? transform;
    readonly int _layers, _heads, _headDim;

    public PrefixEncoder(PrefixTuningConfig c) : base(nameof(PrefixEncoder), c)
    {
        int d = c.TokenDim!.Value;
        _layers = c.NumLayers!.Value; _heads = c.NumAttentionHeads!.Value; _headDim = d / _heads;
        long width = (long)_layers * 2 * d;
        if (c.PrefixProjection && !c.InferenceMode)
        {
            int h = c.EncoderHiddenSize ?? d;
            embedding = Embedding(c.NumVirtualTokens, d);
            var last = Linear(h, width);
            transform = Sequential(Linear(d, h), Tanh(), last);
            if (c.InitWeights == "zero") using (no_grad()) { last.weight!.zero_(); last.bias!.zero_(); }
        }
        else
        {
            embedding = Embedding(c.NumVirtualTokens, width);
            if (c.InitWeights == "zero") using (no_grad()) embedding.weight!.zero_();
        }
        RegisterComponents();
    }

    public override int OutputVirtualPositions => 0;

    Tensor Prefix() => transform is null ? embedding.weight! : transform.call(embedding.weight!);

    public override Tensor PromptEmbeddings()
    {
        using var _ = no_grad();
        return Prefix().detach();
    }

    public override void LoadPromptEmbeddings(Tensor value, string source)
    {
        if (transform is not null)
            throw new PeftSharpException($"{source}: a saved prefix is the projected prefix, not the projection; load it for inference (peft refuses to train it further too)");
        CopyInto(embedding.weight!, value, source);
    }

    public override ModelOutput Forward(PreTrainedModel model, ModelInputs inputs)
    {
        using var scope = NewDisposeScope();
        int nvt = Config.NumVirtualTokens;
        var (b, _) = inputs.Shape();
        var (kvHeads, headDim) = model.KvShape;
        if (kvHeads != _heads || headDim != _headDim)
            throw new PeftSharpException($"PREFIX_TUNING: the adapter's prefix has {_heads} heads of {_headDim} but the model's attention has {kvHeads} key/value heads of {headDim}");
        // The first step of a generation (or a plain forward) puts the prefix in the cache; later steps find it there.
        var output = PrefixCache.Forward(model, inputs, nvt, cache =>
        {
            var kv = Prefix().to(model.DType).view(nvt, 2 * _layers, _heads, _headDim).permute(1, 2, 0, 3)
                .unsqueeze(1).expand(-1, b, -1, -1, -1);
            for (int i = 0; i < _layers; i++) cache.SetPrefix(i, kv[2 * i], kv[2 * i + 1]);
        }, shiftPositions: true);
        return OutputScope.MoveOut(output);
    }
}
