using System.Text.Json;
using System.Text.Json.Serialization;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;
using static TorchSharp.torch.nn;

namespace PeftSharp.Models;

/// <summary>config.json of model_type llama, qwen2 and mistral (one decoder with small differences).</summary>
public sealed record LlamaConfig : ModelConfig, IHasHeadDim
{
    [JsonPropertyName("intermediate_size")] public int IntermediateSize { get; init; }
    [JsonPropertyName("num_key_value_heads")] public int? NumKeyValueHeadsRaw { get; init; }
    [JsonPropertyName("head_dim")] public int? HeadDimRaw { get; init; }
    [JsonPropertyName("rms_norm_eps")] public double RmsNormEps { get; init; } = 1e-6;
    [JsonPropertyName("rope_theta")] public double RopeTheta { get; init; } = 10000.0;
    [JsonPropertyName("rope_scaling")] public JsonElement? RopeScaling { get; init; }
    [JsonPropertyName("max_position_embeddings")] public int MaxPositionEmbeddings { get; init; } = 2048;
    [JsonPropertyName("attention_bias")] public bool AttentionBias { get; init; }
    [JsonPropertyName("mlp_bias")] public bool MlpBias { get; init; }
    [JsonPropertyName("hidden_act")] public string HiddenAct { get; init; } = "silu";
    [JsonPropertyName("sliding_window")] public int? SlidingWindowRaw { get; init; }
    [JsonPropertyName("use_sliding_window")] public bool? UseSlidingWindow { get; init; }
    [JsonPropertyName("max_window_layers")] public int? MaxWindowLayers { get; init; }
    [JsonPropertyName("layer_types")] public string[]? LayerTypes { get; init; }
    [JsonPropertyName("initializer_range")] public double InitializerRange { get; init; } = 0.02;

    [JsonIgnore] public int NumKeyValueHeads => NumKeyValueHeadsRaw ?? NumAttentionHeads;
    [JsonIgnore] public int HeadDim => HeadDimRaw ?? HiddenSize / NumAttentionHeads;
    /// <summary>Qwen2 always has biases on q/k/v (not o); Llama has them with attention_bias.</summary>
    [JsonIgnore] public bool QkvBias => ModelType == "qwen2" || AttentionBias;
    [JsonIgnore] public bool OutputBias => ModelType != "qwen2" && AttentionBias;

    /// <summary>The sliding window of layer <paramref name="i"/>, or null for full attention (transformers' layer_types rule).</summary>
    public int? SlidingWindowOf(int i)
    {
        if (LayerTypes is { } types && i < types.Length) return types[i] == "sliding_attention" ? SlidingWindowRaw : null;
        return ModelType switch
        {
            "mistral" => SlidingWindowRaw,
            "qwen2" when UseSlidingWindow == true && i >= (MaxWindowLayers ?? 0) => SlidingWindowRaw,
            _ => null,
        };
    }

    public override void Validate(string source)
    {
        base.Validate(source);
        RequireRange(source, "intermediate_size", IntermediateSize, MaxIntermediateSize);
        if (NumKeyValueHeadsRaw is { } kv) RequireRange(source, "num_key_value_heads", kv, NumAttentionHeads);
        if (HeadDimRaw is { } hd) RequireRange(source, "head_dim", hd, MaxHiddenSize);
        else if (HiddenSize % NumAttentionHeads != 0)
            throw new PeftConfigException($"{source}: hidden_size {HiddenSize} is not divisible by num_attention_heads {NumAttentionHeads} (set head_dim)");
        if (HeadDim % 2 != 0) throw new PeftConfigException($"{source}: head_dim {HeadDim} must be even for rotary embeddings");
        RequireRange(source, "max_position_embeddings", MaxPositionEmbeddings, MaxPositions);
        if (SlidingWindowRaw is { } w) RequirePositive(source, "sliding_window", w);
        RequirePositive(source, "rms_norm_eps", RmsNormEps);
        RequirePositive(source, "rope_theta", RopeTheta);
        if (NumAttentionHeads % NumKeyValueHeads != 0)
            throw new PeftConfigException($"{source}: num_attention_heads {NumAttentionHeads} is not a multiple of num_key_value_heads {NumKeyValueHeads}");
        if (HiddenAct != "silu") throw new PeftConfigException($"{source}: hidden_act '{HiddenAct}' is not supported (expected silu)");
        Rope.Validate(this, source);
    }

    public override long MinParameterCount(string source) => Checked(source, () => checked(
        (long)VocabSize * HiddenSize * (TieWordEmbeddings ? 1 : 2)
        + (long)NumHiddenLayers * ((long)HiddenSize * HeadDim * (2L * NumAttentionHeads + 2L * NumKeyValueHeads) + 3L * HiddenSize * IntermediateSize)));
}

/// <summary>Rotary position embedding tables, computed as transformers does (float32).</summary>
public static class Rope
{
    static string RopeType(LlamaConfig c)
    {
        if (c.RopeScaling is not { ValueKind: JsonValueKind.Object } s) return "default";
        if (s.TryGetProperty("rope_type", out var t) || s.TryGetProperty("type", out t)) return t.GetString() ?? "default";
        return "default";
    }

    static double Get(JsonElement s, string name, double? fallback = null) =>
        s.TryGetProperty(name, out var v) && v.ValueKind == JsonValueKind.Number ? v.GetDouble()
        : fallback ?? throw new PeftConfigException($"rope_scaling.{name} is required");

    internal static void Validate(LlamaConfig c, string source)
    {
        var t = RopeType(c);
        if (t is not ("default" or "linear" or "llama3"))
            throw new PeftConfigException($"{source}: rope_scaling type '{t}' is not supported (supported: default, linear, llama3)");
        try { using var _ = InverseFrequencies(c); }
        catch (PeftConfigException e) { throw new PeftConfigException($"{source}: {e.Message}"); }
    }

    public static Tensor InverseFrequencies(LlamaConfig c)
    {
        int dim = c.HeadDim;
        using var scope = NewDisposeScope();
        var exponents = arange(0, dim, 2, ScalarType.Int64).to(ScalarType.Float32) / dim;
        var invFreq = 1.0f / pow(tensor((float)c.RopeTheta), exponents);
        var s = c.RopeScaling.GetValueOrDefault();
        switch (RopeType(c))
        {
            case "linear":
                invFreq = invFreq / (float)Get(s, "factor");
                break;
            case "llama3":
            {
                double factor = Get(s, "factor"), low = Get(s, "low_freq_factor"), high = Get(s, "high_freq_factor");
                double oldCtx = Get(s, "original_max_position_embeddings");
                double lowWavelen = oldCtx / low, highWavelen = oldCtx / high;
                var wavelen = 2 * Math.PI / invFreq;
                var scaled = where(wavelen > lowWavelen, invFreq / factor, invFreq);
                var smooth = (oldCtx / wavelen - low) / (high - low);
                var smoothed = (1 - smooth) * scaled / factor + smooth * scaled;
                var medium = (wavelen < highWavelen).logical_not() & (wavelen > lowWavelen).logical_not();
                invFreq = where(medium, smoothed, scaled);
                break;
            }
        }
        return invFreq.to(ScalarType.Float32).MoveToOuterDisposeScope();
    }

    /// <summary>cos/sin of shape [batch, seq, head_dim] for the given position ids.</summary>
    public static (Tensor Cos, Tensor Sin) CosSin(Tensor invFreq, Tensor positionIds, ScalarType dtype)
    {
        using var scope = NewDisposeScope();
        var freqs = positionIds.to(ScalarType.Float32).unsqueeze(-1) * invFreq.to(positionIds.device);
        var emb = cat(new[] { freqs, freqs }, -1);
        return (emb.cos().to(dtype).MoveToOuterDisposeScope(), emb.sin().to(dtype).MoveToOuterDisposeScope());
    }

    internal static Tensor RotateHalf(Tensor x)
    {
        var halves = x.chunk(2, -1);
        return cat(new[] { -halves[1], halves[0] }, -1);
    }

    /// <summary>Applies the rotation to [batch, heads, seq, head_dim] queries or keys.</summary>
    public static Tensor Apply(Tensor x, Tensor cos, Tensor sin)
    {
        cos = Attention.TileRows(cos, x.shape[0]).unsqueeze(1).to(x.dtype);
        sin = Attention.TileRows(sin, x.shape[0]).unsqueeze(1).to(x.dtype);
        return Runtime.FastPaths.Rope ? Rotate(x, cos, sin) : x * cos + RotateHalf(x) * sin;
    }

    static readonly Scalar One = 1.ToScalar();

    /// <summary>x·cos + rotate_half(x)·sin with cos/sin broadcastable to x; the unfused form is <c>PEFTSHARP_FAST_ROPE=0</c>.</summary>
    internal static Tensor Rotate(Tensor x, Tensor cos, Tensor sin)
    {
        // rotate_half(x)·sin = [-x₂, x₁]·[s₁, s₂] = [x₂, x₁]·[-s₁, s₂]: the sign moves to the (head-count times smaller)
        // table, the swap is one roll, and the sum accumulates in place, so forward is 3 passes over x instead of 5 and
        // backward 4 instead of 6; each product and the sum round exactly as before.
        using var scope = NewDisposeScope();
        var halves = sin.chunk(2, -1);
        var signedSin = cat(new[] { -halves[0], halves[1] }, -1);
        var y = x * cos;
        return y.addcmul_(x.roll(x.shape[^1] / 2, -1), signedSin, One).MoveToOuterDisposeScope();
    }
}

/// <summary>Root-mean-square layer norm, computed in float32 as transformers does.</summary>
public sealed class LlamaRMSNorm : Module<Tensor, Tensor>
{
    readonly Parameter weight;
    readonly double _eps;

    public LlamaRMSNorm(long size, double eps) : base(nameof(LlamaRMSNorm))
    {
        weight = Parameter(ones(size));
        _eps = eps;
        RegisterComponents();
    }

    /// <summary>
    /// Null: the output has the input's dtype, as transformers. The trainer's bf16 mode sets bfloat16, so the projections
    /// that read the norm (all of them bfloat16 there) share one cast instead of each casting the float32 output.
    /// </summary>
    public ScalarType? OutputDtype { get; set; }

    public override Tensor forward(Tensor x)
    {
        using var scope = NewDisposeScope();
        var h = x.to(ScalarType.Float32);
        var variance = h.pow(2).mean(new long[] { -1 }, keepdim: true);
        h = h * rsqrt(variance + _eps);
        var y = weight * h.to(x.dtype);
        return (OutputDtype is { } d && d != y.dtype ? y.to(d) : y).MoveToOuterDisposeScope();
    }
}

/// <summary>
/// What a decoder layer calls for self-attention. The seam for methods that wrap the whole attention
/// (LLaMA-Adapter's adaption prompt adds a gated attention over learned keys/values to its output).
/// </summary>
public interface ILlamaAttention
{
    int? SlidingWindow { get; }
    Tensor forward(Tensor x, Tensor cos, Tensor sin, Tensor mask, KVCache? cache);
}

/// <summary>Grouped-query self-attention with rotary embeddings and a KV cache.</summary>
public sealed class LlamaAttention : nn.Module, ILlamaAttention
{
    Module<Tensor, Tensor> q_proj, k_proj, v_proj, o_proj;
    readonly int _heads, _kvHeads, _headDim, _layer;
    readonly int? _window;

    public LlamaAttention(LlamaConfig c, int layer) : base(nameof(LlamaAttention))
    {
        _heads = c.NumAttentionHeads; _kvHeads = c.NumKeyValueHeads; _headDim = c.HeadDim; _layer = layer;
        _window = c.SlidingWindowOf(layer);
        q_proj = Linear(c.HiddenSize, _heads * _headDim, c.QkvBias);
        k_proj = Linear(c.HiddenSize, _kvHeads * _headDim, c.QkvBias);
        v_proj = Linear(c.HiddenSize, _kvHeads * _headDim, c.QkvBias);
        o_proj = Linear(_heads * _headDim, c.HiddenSize, c.OutputBias);
        RegisterComponents();
    }

    public int? SlidingWindow => _window;
    public int Heads => _heads;
    public int KvHeads => _kvHeads;
    public int HeadDim => _headDim;
    public Module<Tensor, Tensor> QProj => q_proj;
    public Module<Tensor, Tensor> KProj => k_proj;
    public Module<Tensor, Tensor> VProj => v_proj;
    public Module<Tensor, Tensor> OProj => o_proj;

    public Tensor forward(Tensor x, Tensor cos, Tensor sin, Tensor mask, KVCache? cache)
    {
        using var scope = NewDisposeScope();
        long b = x.shape[0], t = x.shape[1];
        var q = q_proj.call(x).view(b, t, _heads, _headDim).transpose(1, 2);
        var k = k_proj.call(x).view(b, t, _kvHeads, _headDim).transpose(1, 2);
        var v = v_proj.call(x).view(b, t, _kvHeads, _headDim).transpose(1, 2);
        q = Rope.Apply(q, cos, sin);
        k = Rope.Apply(k, cos, sin);
        if (cache is not null) (k, v) = cache.Update(_layer, k, v);
        int rep = _heads / _kvHeads;
        if (rep > 1) { k = k.repeat_interleave(rep, 1); v = v.repeat_interleave(rep, 1); }
        var attn = Attention.Sdpa(q, k, v, mask);
        var y = attn.transpose(1, 2).reshape(b, t, _heads * _headDim);
        return o_proj.call(y).MoveToOuterDisposeScope();
    }
}

/// <summary>SwiGLU feed-forward: down(silu(gate(x)) * up(x)).</summary>
public sealed class LlamaMLP : Module<Tensor, Tensor>
{
    Module<Tensor, Tensor> gate_proj, up_proj, down_proj;

    public LlamaMLP(LlamaConfig c) : base(nameof(LlamaMLP))
    {
        gate_proj = Linear(c.HiddenSize, c.IntermediateSize, c.MlpBias);
        up_proj = Linear(c.HiddenSize, c.IntermediateSize, c.MlpBias);
        down_proj = Linear(c.IntermediateSize, c.HiddenSize, c.MlpBias);
        RegisterComponents();
    }

    public override Tensor forward(Tensor x)
    {
        using var scope = NewDisposeScope();
        return down_proj.call(functional.silu(gate_proj.call(x)) * up_proj.call(x)).MoveToOuterDisposeScope();
    }
}

/// <summary>Pre-norm decoder block: x + attn(norm(x)), then x + mlp(norm(x)).</summary>
public sealed class LlamaDecoderLayer : nn.Module
{
    // Typed nn.Module so a tuner can replace it by a wrapper that implements ILlamaAttention.
    nn.Module self_attn;
    Module<Tensor, Tensor> mlp;
    Module<Tensor, Tensor> input_layernorm, post_attention_layernorm;
    BlockSlot attention_adapters, output_adapters;

    public LlamaDecoderLayer(LlamaConfig c, int layer) : base(nameof(LlamaDecoderLayer))
    {
        self_attn = new LlamaAttention(c, layer);
        mlp = new LlamaMLP(c);
        input_layernorm = new LlamaRMSNorm(c.HiddenSize, c.RmsNormEps);
        post_attention_layernorm = new LlamaRMSNorm(c.HiddenSize, c.RmsNormEps);
        attention_adapters = new BlockSlot(SlotLocation.Attention, layer);
        output_adapters = new BlockSlot(SlotLocation.Output, layer);
        RegisterComponents();
    }

    ILlamaAttention Attention => (ILlamaAttention)self_attn;
    public int? SlidingWindow => Attention.SlidingWindow;

    public Tensor forward(Tensor x, Tensor cos, Tensor sin, Tensor mask, KVCache? cache)
    {
        using var scope = NewDisposeScope();
        var h = attention_adapters.Apply(Attention.forward(input_layernorm.call(x), cos, sin, mask, cache), x, null);
        var y = output_adapters.Apply(mlp.call(post_attention_layernorm.call(h)), h, null);
        return y.MoveToOuterDisposeScope();
    }
}

/// <summary>The decoder stack: embeddings, blocks, final norm.</summary>
public sealed class LlamaModel : nn.Module
{
    internal Module<Tensor, Tensor> embed_tokens;
    internal ModuleList<LlamaDecoderLayer> layers;
    Module<Tensor, Tensor> norm;
    readonly LlamaConfig _config;
    readonly Func<BlockRunner?> _runner;

    /// <param name="runner">Read at each forward: the owner's block runner (gradient checkpointing), or null.</param>
    public LlamaModel(LlamaConfig c, Func<BlockRunner?>? runner = null) : base(nameof(LlamaModel))
    {
        _config = c;
        _runner = runner ?? (() => null);
        embed_tokens = Embedding(c.VocabSize, c.HiddenSize);
        layers = new ModuleList<LlamaDecoderLayer>(Enumerable.Range(0, c.NumHiddenLayers).Select(i => new LlamaDecoderLayer(c, i)).ToArray());
        norm = new LlamaRMSNorm(c.HiddenSize, c.RmsNormEps);
        RegisterComponents();
    }

    internal Tensor InputEmbeddingWeight => TiedLMHead.EmbeddingWeight(embed_tokens);

    public (Tensor Last, List<Tensor>? All) forward(ModelInputs inputs)
    {
        var (b, t) = inputs.Shape();
        var cache = inputs.Cache;
        long past = cache?.SeqLength ?? 0;
        var h = inputs.InputsEmbeds ?? embed_tokens.call(inputs.InputIds!);
        var device = h.device;
        var positions = inputs.PositionIds ?? arange(past, past + t, device: device).unsqueeze(0).expand(b, t);
        // Recomputed per call (head_dim/2 values): a Tensor field would become a checkpoint buffer.
        using var invFreq = Rope.InverseFrequencies(_config);
        var (cos, sin) = Rope.CosSin(invFreq, positions, h.dtype);

        // Layers share one mask unless some use a sliding window (Mistral, some Qwen2).
        var masks = new Dictionary<int, Tensor>();
        Tensor MaskFor(int? window)
        {
            int key = window ?? -1;
            if (!masks.TryGetValue(key, out var m))
                masks[key] = m = AttentionMasks.Causal(b, t, past, inputs.AttentionMask, device, window);
            return m;
        }

        var all = inputs.OutputHiddenStates ? new List<Tensor> { h } : null;
        var run = _runner();
        foreach (var layer in layers)
        {
            var mask = MaskFor(layer.SlidingWindow);
            h = run is null ? layer.forward(h, cos, sin, mask, cache) : run(x => layer.forward(x, cos, sin, mask, cache), h);
            all?.Add(h);
        }
        h = norm.call(h);
        if (all is not null) all[^1] = h;
        return (h, all);
    }
}

/// <summary>Llama / Qwen2 / Mistral with a language-modelling head.</summary>
public sealed class LlamaForCausalLM : PreTrainedModel
{
    LlamaModel model;
    Module<Tensor, Tensor> lm_head;

    public LlamaForCausalLM(LlamaConfig c) : base(nameof(LlamaForCausalLM), c)
    {
        model = new LlamaModel(c, () => BlockRunner);
        lm_head = c.TieWordEmbeddings ? new TiedLMHead(() => model.InputEmbeddingWeight) : Linear(c.HiddenSize, c.VocabSize, hasBias: false);
        RegisterComponents();
        ModelInit.Normal(this, c.InitializerRange);
    }

    public LlamaConfig LlamaConfig => (LlamaConfig)Config;
    public override bool IsCausalLM => true;
    public override Module<Tensor, Tensor> InputEmbeddings => model.embed_tokens;
    public override IReadOnlyCollection<string> TiedKeys => LlamaConfig.TieWordEmbeddings ? new[] { "lm_head.weight" } : Array.Empty<string>();
    public override (int KvHeads, int HeadDim) KvShape => (LlamaConfig.NumKeyValueHeads, LlamaConfig.HeadDim);
    public override bool SupportsBlockRunner => true;

    public override ModelOutput Forward(ModelInputs inputs)
    {
        var (last, all) = model.forward(inputs);
        return new ModelOutput { Logits = lm_head.call(last), LastHiddenState = last, HiddenStates = all };
    }
}
