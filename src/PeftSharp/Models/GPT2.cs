using System.Text.Json.Serialization;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;
using static TorchSharp.torch.nn;

namespace PeftSharp.Models;

/// <summary>config.json of model_type gpt2. GPT-2 names the common sizes n_embd, n_layer and n_head.</summary>
public sealed record GPT2Config : ModelConfig
{
    [JsonPropertyName("n_embd")] public override int HiddenSize { get; init; } = 768;
    [JsonPropertyName("n_layer")] public override int NumHiddenLayers { get; init; } = 12;
    [JsonPropertyName("n_head")] public override int NumAttentionHeads { get; init; } = 12;
    [JsonPropertyName("n_positions")] public int NPositions { get; init; } = 1024;
    [JsonPropertyName("n_inner")] public int? NInner { get; init; }
    [JsonPropertyName("activation_function")] public string ActivationFunction { get; init; } = "gelu_new";
    [JsonPropertyName("layer_norm_epsilon")] public double LayerNormEpsilon { get; init; } = 1e-5;
    [JsonPropertyName("initializer_range")] public double InitializerRange { get; init; } = 0.02;
    [JsonPropertyName("embd_pdrop")] public double EmbdPdrop { get; init; } = 0.1;
    [JsonPropertyName("attn_pdrop")] public double AttnPdrop { get; init; } = 0.1;
    [JsonPropertyName("resid_pdrop")] public double ResidPdrop { get; init; } = 0.1;
    [JsonPropertyName("scale_attn_weights")] public bool ScaleAttnWeights { get; init; } = true;
    [JsonPropertyName("scale_attn_by_inverse_layer_idx")] public bool ScaleAttnByInverseLayerIdx { get; init; }
    [JsonPropertyName("reorder_and_upcast_attn")] public bool ReorderAndUpcastAttn { get; init; }
    [JsonPropertyName("add_cross_attention")] public bool AddCrossAttention { get; init; }

    [JsonIgnore] public int InnerSize => NInner ?? 4 * HiddenSize;
    [JsonIgnore] public int HeadDim => HiddenSize / NumAttentionHeads;

    public override void Validate(string source)
    {
        RequirePositive(source, "n_embd", HiddenSize);
        RequirePositive(source, "n_layer", NumHiddenLayers);
        RequirePositive(source, "n_head", NumAttentionHeads);
        RequirePositive(source, "n_positions", NPositions);
        if (HiddenSize % NumAttentionHeads != 0)
            throw new PeftConfigException($"{source}: n_embd {HiddenSize} is not divisible by n_head {NumAttentionHeads}");
        base.Validate(source);
        RequireRange(source, "n_positions", NPositions, MaxPositions);
        RequireRange(source, "n_inner", InnerSize, MaxIntermediateSize);
        RequirePositive(source, "layer_norm_epsilon", LayerNormEpsilon);
        Activations.Get(ActivationFunction, $"{source}: activation_function");
        // transformers' eager and sdpa attention disagree on these (sdpa ignores them), so no single answer is "correct".
        if (!ScaleAttnWeights) throw Unsupported(source, "scale_attn_weights", "true");
        if (ScaleAttnByInverseLayerIdx) throw Unsupported(source, "scale_attn_by_inverse_layer_idx", "false");
        if (ReorderAndUpcastAttn) throw Unsupported(source, "reorder_and_upcast_attn", "false");
        if (AddCrossAttention) throw Unsupported(source, "add_cross_attention", "false");
    }

    static PeftConfigException Unsupported(string source, string field, string expected) =>
        new($"{source}: '{field}' is not supported by PeftSharp's GPT-2 (expected {expected})");
}

/// <summary>Causal self-attention with fused q/k/v (c_attn) and a KV cache; scale 1/sqrt(head_dim).</summary>
public sealed class GPT2Attention : nn.Module
{
    Module<Tensor, Tensor> c_attn, c_proj;
    readonly int _heads, _headDim, _layer;
    readonly double _attnDropout, _residDropout;

    public GPT2Attention(GPT2Config c, int layer) : base(nameof(GPT2Attention))
    {
        _heads = c.NumAttentionHeads; _headDim = c.HeadDim; _layer = layer;
        _attnDropout = c.AttnPdrop; _residDropout = c.ResidPdrop;
        c_attn = new Conv1D(3 * c.HiddenSize, c.HiddenSize);
        c_proj = new Conv1D(c.HiddenSize, c.HiddenSize);
        RegisterComponents();
    }

    public Tensor forward(Tensor x, Tensor? mask, KVCache? cache)
    {
        using var scope = NewDisposeScope();
        long b = x.shape[0], t = x.shape[1];
        var qkv = c_attn.call(x).view(b, t, 3, _heads, _headDim).permute(2, 0, 3, 1, 4);
        Tensor q = qkv[0], k = qkv[1], v = qkv[2];
        if (cache is not null) (k, v) = cache.Update(_layer, k, v);
        var attn = Attention.Sdpa(q, k, v, mask, training ? _attnDropout : 0);
        var y = c_proj.call(attn.transpose(1, 2).reshape(b, t, _heads * _headDim));
        return functional.dropout(y, _residDropout, training).MoveToOuterDisposeScope();
    }
}

/// <summary>Feed-forward: c_proj(act(c_fc(x))).</summary>
public sealed class GPT2MLP : Module<Tensor, Tensor>
{
    Module<Tensor, Tensor> c_fc, c_proj;
    readonly Func<Tensor, Tensor> _act;
    readonly double _dropout;

    public GPT2MLP(GPT2Config c) : base(nameof(GPT2MLP))
    {
        c_fc = new Conv1D(c.InnerSize, c.HiddenSize);
        c_proj = new Conv1D(c.HiddenSize, c.InnerSize);
        _act = Activations.Get(c.ActivationFunction, "activation_function");
        _dropout = c.ResidPdrop;
        RegisterComponents();
    }

    public override Tensor forward(Tensor x)
    {
        using var scope = NewDisposeScope();
        return functional.dropout(c_proj.call(_act(c_fc.call(x))), _dropout, training).MoveToOuterDisposeScope();
    }
}

/// <summary>Pre-norm block: x + attn(ln_1(x)), then x + mlp(ln_2(x)).</summary>
public sealed class GPT2Block : nn.Module
{
    Module<Tensor, Tensor> ln_1;
    GPT2Attention attn;
    Module<Tensor, Tensor> ln_2;
    Module<Tensor, Tensor> mlp;
    BlockSlot attention_adapters, output_adapters;

    public GPT2Block(GPT2Config c, int layer) : base(nameof(GPT2Block))
    {
        ln_1 = LayerNorm(c.HiddenSize, c.LayerNormEpsilon);
        attn = new GPT2Attention(c, layer);
        ln_2 = LayerNorm(c.HiddenSize, c.LayerNormEpsilon);
        mlp = new GPT2MLP(c);
        attention_adapters = new BlockSlot(SlotLocation.Attention, layer);
        output_adapters = new BlockSlot(SlotLocation.Output, layer);
        RegisterComponents();
    }

    public Tensor forward(Tensor x, Tensor? mask, KVCache? cache)
    {
        using var scope = NewDisposeScope();
        var h = attention_adapters.Apply(attn.forward(ln_1.call(x), mask, cache), x, null);
        return output_adapters.Apply(mlp.call(ln_2.call(h)), h, null).MoveToOuterDisposeScope();
    }
}

/// <summary>The decoder stack: token + learned position embeddings, blocks, final LayerNorm.</summary>
public sealed class GPT2Model : nn.Module
{
    internal Module<Tensor, Tensor> wte;
    Module<Tensor, Tensor> wpe;
    ModuleList<GPT2Block> h;
    Module<Tensor, Tensor> ln_f;
    readonly GPT2Config _config;

    public GPT2Model(GPT2Config c) : base(nameof(GPT2Model))
    {
        _config = c;
        wte = Embedding(c.VocabSize, c.HiddenSize);
        wpe = Embedding(c.NPositions, c.HiddenSize);
        h = new ModuleList<GPT2Block>(Enumerable.Range(0, c.NumHiddenLayers).Select(i => new GPT2Block(c, i)).ToArray());
        ln_f = LayerNorm(c.HiddenSize, c.LayerNormEpsilon);
        RegisterComponents();
    }

    internal Tensor InputEmbeddingWeight => TiedLMHead.EmbeddingWeight(wte);

    public (Tensor Last, List<Tensor>? All) forward(ModelInputs inputs)
    {
        var (b, t) = inputs.Shape();
        var cache = inputs.Cache;
        long past = cache?.SeqLength ?? 0;
        if (inputs.PositionIds is null && past + t > _config.NPositions)
            throw new PeftSharpException($"GPT-2 has {_config.NPositions} learned positions (n_positions) but the input reaches position {past + t - 1}");
        var x = inputs.InputsEmbeds ?? wte.call(inputs.InputIds!);
        var device = x.device;
        var positions = inputs.PositionIds ?? arange(past, past + t, device: device).unsqueeze(0);
        x = x + wpe.call(positions);
        // transformers embeds token types with the token embedding (wte).
        if (inputs.TokenTypeIds is not null) x = x + wte.call(inputs.TokenTypeIds);
        x = functional.dropout(x, _config.EmbdPdrop, training);

        using var mask = AttentionMasks.Causal(b, t, past, inputs.AttentionMask, device);
        var all = inputs.OutputHiddenStates ? new List<Tensor> { x } : null;
        foreach (var block in h)
        {
            x = block.forward(x, mask, cache);
            all?.Add(x);
        }
        x = ln_f.call(x);
        if (all is not null) all[^1] = x;
        return (x, all);
    }
}

/// <summary>GPT-2 with a language-modelling head (tied to wte unless tie_word_embeddings is false).</summary>
public sealed class GPT2LMHeadModel : PreTrainedModel
{
    GPT2Model transformer;
    Module<Tensor, Tensor> lm_head;

    public GPT2LMHeadModel(GPT2Config c) : base(nameof(GPT2LMHeadModel), c)
    {
        transformer = new GPT2Model(c);
        lm_head = c.TieWordEmbeddings ? new TiedLMHead(() => transformer.InputEmbeddingWeight) : Linear(c.HiddenSize, c.VocabSize, hasBias: false);
        RegisterComponents();
        ModelInit.Normal(this, c.InitializerRange);
        // GPT-2 scales the residual projections' init by 1/sqrt(2 * n_layer).
        using var _ = no_grad();
        foreach (var (name, p) in named_parameters())
            if (name.EndsWith("c_proj.weight", StringComparison.Ordinal))
                p.normal_(0, c.InitializerRange / Math.Sqrt(2.0 * c.NumHiddenLayers));
    }

    public GPT2Config GPT2Config => (GPT2Config)Config;
    public override bool IsCausalLM => true;
    public override Module<Tensor, Tensor> InputEmbeddings => transformer.wte;
    public override string BaseModelPrefix => "transformer";
    public override IReadOnlyCollection<string> TiedKeys => GPT2Config.TieWordEmbeddings ? new[] { "lm_head.weight" } : Array.Empty<string>();
    public override (int KvHeads, int HeadDim) KvShape => (GPT2Config.NumAttentionHeads, GPT2Config.HeadDim);

    public override ModelOutput Forward(ModelInputs inputs)
    {
        var (last, all) = transformer.forward(inputs);
        return new ModelOutput { Logits = lm_head.call(last), LastHiddenState = last, HiddenStates = all };
    }
}
