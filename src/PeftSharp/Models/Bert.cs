using System.Text.Json.Serialization;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;
using static TorchSharp.torch.nn;

namespace PeftSharp.Models;

/// <summary>config.json of model_type bert.</summary>
public sealed record BertConfig : ModelConfig
{
    [JsonPropertyName("intermediate_size")] public int IntermediateSize { get; init; } = 3072;
    [JsonPropertyName("hidden_act")] public string HiddenAct { get; init; } = "gelu";
    [JsonPropertyName("max_position_embeddings")] public int MaxPositionEmbeddings { get; init; } = 512;
    [JsonPropertyName("type_vocab_size")] public int TypeVocabSize { get; init; } = 2;
    [JsonPropertyName("layer_norm_eps")] public double LayerNormEps { get; init; } = 1e-12;
    [JsonPropertyName("initializer_range")] public double InitializerRange { get; init; } = 0.02;
    [JsonPropertyName("hidden_dropout_prob")] public double HiddenDropoutProb { get; init; } = 0.1;
    [JsonPropertyName("attention_probs_dropout_prob")] public double AttentionProbsDropoutProb { get; init; } = 0.1;
    [JsonPropertyName("classifier_dropout")] public double? ClassifierDropout { get; init; }
    [JsonPropertyName("position_embedding_type")] public string PositionEmbeddingType { get; init; } = "absolute";
    [JsonPropertyName("is_decoder")] public bool IsDecoder { get; init; }
    [JsonPropertyName("add_cross_attention")] public bool AddCrossAttention { get; init; }
    [JsonPropertyName("id2label")] public Dictionary<string, string>? Id2Label { get; init; }
    [JsonPropertyName("num_labels")] public int? NumLabelsRaw { get; init; }
    [JsonPropertyName("problem_type")] public string? ProblemType { get; init; }

    /// <summary>transformers' rule: id2label wins, then num_labels, then 2.</summary>
    [JsonIgnore] public int NumLabels => Id2Label?.Count ?? NumLabelsRaw ?? 2;
    [JsonIgnore] public int HeadDim => HiddenSize / NumAttentionHeads;

    public override void Validate(string source)
    {
        base.Validate(source);
        RequireRange(source, "intermediate_size", IntermediateSize, MaxIntermediateSize);
        RequireRange(source, "max_position_embeddings", MaxPositionEmbeddings, MaxPositions);
        RequireRange(source, "type_vocab_size", TypeVocabSize, MaxVocabSize);
        RequirePositive(source, "layer_norm_eps", LayerNormEps);
        RequirePositive(source, "num_labels", NumLabels);
        Activations.Get(HiddenAct, $"{source}: hidden_act");
        if (PositionEmbeddingType != "absolute")
            throw new PeftConfigException($"{source}: position_embedding_type '{PositionEmbeddingType}' is not supported (expected absolute)");
        if (IsDecoder) throw new PeftConfigException($"{source}: 'is_decoder' true is not supported (BERT is loaded as a bidirectional encoder)");
        if (AddCrossAttention) throw new PeftConfigException($"{source}: 'add_cross_attention' true is not supported");
        if (ProblemType is not (null or "regression" or "single_label_classification" or "multi_label_classification"))
            throw new PeftConfigException($"{source}: problem_type '{ProblemType}' is not one of regression, single_label_classification, multi_label_classification");
    }
}

/// <summary>word + token type + absolute position embeddings, then LayerNorm.</summary>
public sealed class BertEmbeddings : nn.Module
{
    internal Module<Tensor, Tensor> word_embeddings;
    Module<Tensor, Tensor> position_embeddings, token_type_embeddings;
    Module<Tensor, Tensor> LayerNorm;
    readonly BertConfig _config;

    public BertEmbeddings(BertConfig c) : base(nameof(BertEmbeddings))
    {
        _config = c;
        word_embeddings = Embedding(c.VocabSize, c.HiddenSize, padding_idx: c.PadTokenId);
        position_embeddings = Embedding(c.MaxPositionEmbeddings, c.HiddenSize);
        token_type_embeddings = Embedding(c.TypeVocabSize, c.HiddenSize);
        LayerNorm = nn.LayerNorm(c.HiddenSize, c.LayerNormEps);
        RegisterComponents();
    }

    /// <param name="past">Cached positions (a prefix-tuning prefix): absolute positions start after it.</param>
    public Tensor forward(ModelInputs inputs, long past)
    {
        using var scope = NewDisposeScope();
        var (_, t) = inputs.Shape();
        var x = inputs.InputsEmbeds ?? word_embeddings.call(inputs.InputIds!);
        var device = x.device;
        if (inputs.PositionIds is null && past + t > _config.MaxPositionEmbeddings)
            throw new PeftSharpException($"BERT has {_config.MaxPositionEmbeddings} positions (max_position_embeddings) but the input reaches position {past + t - 1}");
        var tokenTypes = inputs.TokenTypeIds ?? zeros(1, t, ScalarType.Int64, device);
        var positions = inputs.PositionIds ?? arange(past, past + t, device: device).unsqueeze(0);
        x = x + token_type_embeddings.call(tokenTypes);
        x = x + position_embeddings.call(positions);
        x = LayerNorm.call(x);
        return functional.dropout(x, _config.HiddenDropoutProb, training).MoveToOuterDisposeScope();
    }
}

/// <summary>Bidirectional multi-head attention (query/key/value); keys/values go through the cache when one is given (prefix tuning).</summary>
public sealed class BertSelfAttention : nn.Module
{
    Module<Tensor, Tensor> query, key, value;
    readonly int _heads, _headDim, _layer;
    readonly double _dropout;

    public BertSelfAttention(BertConfig c, int layer) : base(nameof(BertSelfAttention))
    {
        _heads = c.NumAttentionHeads; _headDim = c.HeadDim; _layer = layer; _dropout = c.AttentionProbsDropoutProb;
        query = Linear(c.HiddenSize, c.HiddenSize);
        key = Linear(c.HiddenSize, c.HiddenSize);
        value = Linear(c.HiddenSize, c.HiddenSize);
        RegisterComponents();
    }

    public Tensor forward(Tensor x, Tensor? mask, KVCache? cache)
    {
        using var scope = NewDisposeScope();
        long b = x.shape[0], t = x.shape[1];
        var q = query.call(x).view(b, t, _heads, _headDim).transpose(1, 2);
        var k = key.call(x).view(b, t, _heads, _headDim).transpose(1, 2);
        var v = value.call(x).view(b, t, _heads, _headDim).transpose(1, 2);
        if (cache is not null) (k, v) = cache.Update(_layer, k, v);
        var attn = Attention.Sdpa(q, k, v, mask, training ? _dropout : 0);
        return attn.transpose(1, 2).reshape(b, t, _heads * _headDim).MoveToOuterDisposeScope();
    }
}

/// <summary>Post-norm residual: LayerNorm(dropout(dense(h)) + input), through the block's adapter slot. Used after attention (BertSelfOutput) and after the FFN (BertOutput).</summary>
public sealed class BertResidualOutput : nn.Module
{
    Module<Tensor, Tensor> dense;
    Module<Tensor, Tensor> LayerNorm;
    BlockSlot adapter_slot;
    readonly double _dropout;

    public BertResidualOutput(BertConfig c, int inFeatures, string name, BlockSlot slot) : base(name)
    {
        dense = Linear(inFeatures, c.HiddenSize);
        LayerNorm = nn.LayerNorm(c.HiddenSize, c.LayerNormEps);
        adapter_slot = slot;
        _dropout = c.HiddenDropoutProb;
        RegisterComponents();
    }

    public Tensor forward(Tensor h, Tensor input)
    {
        using var scope = NewDisposeScope();
        var y = functional.dropout(dense.call(h), _dropout, training);
        return adapter_slot.Apply(y, input, LayerNorm).MoveToOuterDisposeScope();
    }
}

/// <summary>Self-attention followed by its output projection and residual norm.</summary>
public sealed class BertAttention : nn.Module
{
    BertSelfAttention self;
    BertResidualOutput output;

    public BertAttention(BertConfig c, int layer) : base(nameof(BertAttention))
    {
        self = new BertSelfAttention(c, layer);
        output = new BertResidualOutput(c, c.HiddenSize, "BertSelfOutput", new BlockSlot(SlotLocation.Attention, layer, keysInParent: true));
        RegisterComponents();
    }

    public Tensor forward(Tensor x, Tensor? mask, KVCache? cache)
    {
        using var scope = NewDisposeScope();
        return output.forward(self.forward(x, mask, cache), x).MoveToOuterDisposeScope();
    }
}

/// <summary>The FFN's first half: act(dense(x)).</summary>
public sealed class BertIntermediate : Module<Tensor, Tensor>
{
    Module<Tensor, Tensor> dense;
    readonly Func<Tensor, Tensor> _act;

    public BertIntermediate(BertConfig c) : base(nameof(BertIntermediate))
    {
        dense = Linear(c.HiddenSize, c.IntermediateSize);
        _act = Activations.Get(c.HiddenAct, "hidden_act");
        RegisterComponents();
    }

    public override Tensor forward(Tensor x)
    {
        using var scope = NewDisposeScope();
        return _act(dense.call(x)).MoveToOuterDisposeScope();
    }
}

/// <summary>One encoder layer: attention, then the FFN (intermediate + output) with a residual norm.</summary>
public sealed class BertLayer : nn.Module
{
    BertAttention attention;
    Module<Tensor, Tensor> intermediate;
    BertResidualOutput output;

    public BertLayer(BertConfig c, int layer) : base(nameof(BertLayer))
    {
        attention = new BertAttention(c, layer);
        intermediate = new BertIntermediate(c);
        output = new BertResidualOutput(c, c.IntermediateSize, "BertOutput", new BlockSlot(SlotLocation.Output, layer, keysInParent: true));
        RegisterComponents();
    }

    public Tensor forward(Tensor x, Tensor? mask, KVCache? cache)
    {
        using var scope = NewDisposeScope();
        var a = attention.forward(x, mask, cache);
        return output.forward(intermediate.call(a), a).MoveToOuterDisposeScope();
    }
}

public sealed class BertEncoder : nn.Module
{
    internal ModuleList<BertLayer> layer;

    public BertEncoder(BertConfig c) : base(nameof(BertEncoder))
    {
        layer = new ModuleList<BertLayer>(Enumerable.Range(0, c.NumHiddenLayers).Select(i => new BertLayer(c, i)).ToArray());
        RegisterComponents();
    }
}

/// <summary>tanh(dense(h[:, 0])): the first token's summary the classifier reads.</summary>
public sealed class BertPooler : Module<Tensor, Tensor>
{
    Module<Tensor, Tensor> dense;

    public BertPooler(BertConfig c) : base(nameof(BertPooler))
    {
        dense = Linear(c.HiddenSize, c.HiddenSize);
        RegisterComponents();
    }

    public override Tensor forward(Tensor h)
    {
        using var scope = NewDisposeScope();
        return dense.call(h.select(1, 0)).tanh().MoveToOuterDisposeScope();
    }
}

/// <summary>
/// The BERT encoder. It has no head, so <see cref="ModelOutput.Logits"/> is the last hidden state
/// [batch, seq, hidden] (the same tensor as <see cref="ModelOutput.LastHiddenState"/>); the pooler's output
/// is <see cref="ModelOutput.PooledOutput"/>.
/// </summary>
public sealed class BertModel : PreTrainedModel
{
    BertEmbeddings embeddings;
    BertEncoder encoder;
    Module<Tensor, Tensor> pooler;

    public BertModel(BertConfig c) : this(c, init: true) { }

    internal BertModel(BertConfig c, bool init) : base(nameof(BertModel), c)
    {
        embeddings = new BertEmbeddings(c);
        encoder = new BertEncoder(c);
        pooler = new BertPooler(c);
        RegisterComponents();
        if (init) Init(this, c);
    }

    /// <summary>transformers' BERT init: N(0, initializer_range) weights, zero biases, the padding row zero.</summary>
    internal static void Init(nn.Module model, BertConfig c)
    {
        ModelInit.Normal(model, c.InitializerRange);
        if (c.PadTokenId is not int pad) return;
        using var _ = no_grad();
        foreach (var (name, p) in model.named_parameters())
            if (name.EndsWith("embeddings.word_embeddings.weight", StringComparison.Ordinal) && pad < p.shape[0])
                p[pad].zero_();
    }

    public BertConfig BertConfig => (BertConfig)Config;
    public override bool IsCausalLM => false;
    public override string BaseModelPrefix => "bert";
    public override Module<Tensor, Tensor> InputEmbeddings => embeddings.word_embeddings;
    public override (int KvHeads, int HeadDim) KvShape => (BertConfig.NumAttentionHeads, BertConfig.HeadDim);

    public override ModelOutput Forward(ModelInputs inputs)
    {
        var cache = inputs.Cache;
        var x = embeddings.forward(inputs, cache?.SeqLength ?? 0);
        // The padding mask hides keys only; every query row (pads included) attends to the real tokens.
        using var mask = inputs.AttentionMask is null ? null : AttentionMasks.Bidirectional(inputs.AttentionMask);
        var all = inputs.OutputHiddenStates ? new List<Tensor> { x } : null;
        foreach (var layer in encoder.layer)
        {
            x = layer.forward(x, mask, cache);
            all?.Add(x);
        }
        return new ModelOutput { Logits = x, LastHiddenState = x, PooledOutput = pooler.call(x), HiddenStates = all };
    }
}

/// <summary>BERT with a linear classifier on the pooled output: logits [batch, num_labels].</summary>
public sealed class BertForSequenceClassification : PreTrainedModel
{
    BertModel bert;
    Module<Tensor, Tensor> classifier;
    readonly double _dropout;

    public BertForSequenceClassification(BertConfig c) : base(nameof(BertForSequenceClassification), c)
    {
        bert = new BertModel(c, init: false);
        classifier = Linear(c.HiddenSize, c.NumLabels);
        _dropout = c.ClassifierDropout ?? c.HiddenDropoutProb;
        RegisterComponents();
        BertModel.Init(this, c);
    }

    public BertConfig BertConfig => (BertConfig)Config;
    public override bool IsCausalLM => false;
    public override string BaseModelPrefix => "bert";
    public override int? NumLabels => BertConfig.NumLabels;
    // BertForMaskedLM checkpoints have no pooler; BertModel ones no classifier.
    public override bool IsTaskHeadKey(string key) =>
        key.StartsWith("classifier.", StringComparison.Ordinal) || key.StartsWith("bert.pooler.", StringComparison.Ordinal);
    public override Module<Tensor, Tensor> InputEmbeddings => bert.InputEmbeddings;
    public override (int KvHeads, int HeadDim) KvShape => bert.KvShape;

    public override ModelOutput Forward(ModelInputs inputs)
    {
        var o = bert.Forward(inputs);
        var logits = classifier.call(functional.dropout(o.PooledOutput!, _dropout, training));
        return new ModelOutput { Logits = logits, LastHiddenState = o.LastHiddenState, PooledOutput = o.PooledOutput, HiddenStates = o.HiddenStates };
    }
}
