using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;
using static TorchSharp.torch.nn;

namespace PeftSharp.Models;

/// <summary>An output projection that reuses the input embedding matrix (tie_word_embeddings); it owns no parameter.</summary>
public sealed class TiedLMHead : Module<Tensor, Tensor>
{
    // A delegate, not a field: TorchSharp would register a Module or Tensor field as this module's own.
    readonly Func<Tensor> _weight;

    /// <param name="weight">Returns the embedding weight at call time, so a swapped embedding module is followed.</param>
    public TiedLMHead(Func<Tensor> weight) : base(nameof(TiedLMHead)) => _weight = weight;

    public Tensor Weight => _weight();

    /// <summary>The weight of an embedding module, also when a tuner has wrapped it (the first parameter named *weight).</summary>
    public static Tensor EmbeddingWeight(nn.Module embedding) =>
        embedding.get_parameter("weight") ?? embedding.named_parameters().First(p => p.name.EndsWith("weight")).parameter;

    public override Tensor forward(Tensor x)
    {
        var w = Weight;
        // The trainer's bf16 mode stores a frozen embedding in bfloat16 while activations stay float32.
        return w.dtype == x.dtype ? functional.linear(x, w) : functional.linear(x.to(w.dtype), w).to(x.dtype);
    }
}

/// <summary>transformers' default initialization for randomly built models: N(0, std) for linear and embedding weights, zero biases, unit norms.</summary>
public static class ModelInit
{
    public static void Normal(nn.Module model, double std)
    {
        using var _ = no_grad();
        foreach (var (_, m) in model.named_modules())
        {
            switch (m)
            {
                case Linear l:
                    l.weight!.normal_(0, std);
                    l.bias?.zero_();
                    break;
                case Embedding e:
                    e.weight!.normal_(0, std);
                    break;
                case Conv1D c:
                    c.weight.normal_(0, std);
                    c.bias.zero_();
                    break;
            }
        }
    }
}

/// <summary>GPT-2's "Conv1D": a linear layer whose weight is stored transposed, [in, out] (fan_in_fan_out in PEFT terms).</summary>
public sealed class Conv1D : Module<Tensor, Tensor>
{
    public Parameter weight;
    public Parameter bias;

    public Conv1D(long nf, long nx) : base(nameof(Conv1D))
    {
        weight = Parameter(empty(nx, nf).normal_(0, 0.02));
        bias = Parameter(zeros(nf));
        RegisterComponents();
    }

    public long InFeatures => weight.shape[0];
    public long OutFeatures => weight.shape[1];

    public override Tensor forward(Tensor x)
    {
        using var scope = NewDisposeScope();
        var shape = x.shape.ToArray();
        shape[^1] = OutFeatures;
        return addmm(bias, x.reshape(-1, InFeatures), weight, 1, 1).view(shape).MoveToOuterDisposeScope();
    }
}

/// <summary>transformers' ACT2FN names for the activations our architectures use.</summary>
public static class Activations
{
    public static IReadOnlyCollection<string> Supported { get; } = new[] { "gelu", "gelu_new", "gelu_pytorch_tanh", "gelu_fast", "relu", "silu", "swish", "tanh" };

    /// <param name="field">The config field that named it, for the error message.</param>
    public static Func<Tensor, Tensor> Get(string name, string field) => name switch
    {
        "gelu" => x => functional.gelu(x),
        // gelu_new/gelu_fast are formulas of the tanh approximation; libtorch's fused kernel differs only in rounding (~1e-7).
        "gelu_new" or "gelu_pytorch_tanh" or "gelu_fast" => x => functional.gelu(x, TorchSharp.Modules.GELU.Approximate.tanh),
        "relu" => x => functional.relu(x),
        "silu" or "swish" => x => functional.silu(x),
        "tanh" => x => x.tanh(),
        _ => throw new PeftConfigException($"{field} '{name}' is not supported (supported: {string.Join(", ", Supported)})"),
    };
}

/// <summary>Scaled dot-product attention shared by the architectures.</summary>
public static class Attention
{
    /// <summary>
    /// A per-row tensor (mask, rotary table) made for the batch, tiled to <paramref name="rows"/> when a layer sees the
    /// batch replicated: AdapterHub's Parallel composition copies it at its first adapter layer, so the layers below
    /// run once for all copies.
    /// </summary>
    public static Tensor TileRows(Tensor t, long rows)
    {
        long have = t.shape[0];
        if (have == rows || have == 1) return t;
        if (rows % have != 0) throw new PeftSharpException($"a per-row tensor of {have} rows cannot serve {rows} rows");
        return t.repeat(new[] { rows / have }.Concat(Enumerable.Repeat(1L, (int)t.dim() - 1)).ToArray());
    }

    // Largest batch × heads × queries × keys the eager path takes: its scores tensor (and, in training, the saved
    // probabilities) is this many bfloat16 values per layer.
    const long EagerLimit = 1L << 22;

    /// <summary>
    /// SDPA over [batch, heads, seq, head_dim]; keys and values take the queries' dtype first, because in the trainer's
    /// bf16 mode a float32 KV prefix or adapter output can meet bfloat16 projections here. Boolean masks: true attends.
    /// In bfloat16 on the CPU, small problems run eagerly (matmul, softmax, matmul, as transformers' eager attention):
    /// libtorch's bf16 CPU flash kernel took 15.8 ms forward+backward per layer of the train-step bench, this ~9 (the
    /// whole LoRA bf16 step: 0.48 -> 0.43 s). Float32 keeps SDPA: an eager path there, even in causal query blocks that
    /// skip later keys, saved ~3 % of the LoRA step but kept 106–166 MB more for backward (docs/benchmarks.md).
    /// </summary>
    public static Tensor Sdpa(Tensor q, Tensor k, Tensor v, Tensor? mask, double dropout = 0)
    {
        if (k.dtype != q.dtype) k = k.to(q.dtype);
        if (v.dtype != q.dtype) v = v.to(q.dtype);
        if (mask is not null) mask = TileRows(mask, q.shape[0]);
        long scores = q.shape[0] * q.shape[1] * q.shape[2] * k.shape[2];
        if (q.dtype != ScalarType.BFloat16 || q.device.type != DeviceType.CPU || scores > EagerLimit)
            return functional.scaled_dot_product_attention(q, k, v, mask, dropout);
        using var scope = NewDisposeScope();
        // Scaling q rather than the scores is a pass over heads × seq × head_dim instead of heads × seq × seq, forward
        // and backward (SDPA's math path scales before the product too).
        var w = (q * (1.0 / Math.Sqrt(q.shape[^1]))).matmul(k.transpose(-2, -1));
        // An additive mask built on the (heads-times smaller) mask and broadcast: masked_fill over the scores is a
        // serial kernel here, and its backward another pass. The dtype's lowest value rather than -inf, so a row with
        // nothing to attend to (padding) gives no NaN.
        if (mask is not null)
            w = w + (mask.dtype == ScalarType.Bool ? zeros(mask.shape, q.dtype, q.device).masked_fill_(mask.logical_not(), -3.38e38) : mask.to(q.dtype));
        // libtorch's bfloat16 softmax accumulates in float32 and rounds once: transformers' float32 softmax then cast.
        var p = w.softmax(-1);
        if (dropout > 0) p = functional.dropout(p, dropout, true);
        var y = p.matmul(v);
        // A row with nothing to attend to averaged the values above; SDPA (and transformers on torch >= 2.5) gives zero.
        if (mask?.dtype == ScalarType.Bool)
        {
            var attends = mask.any(-1, keepdim: true);
            if (!attends.all().item<bool>()) y = y * attends.to(q.dtype);
        }
        return y.MoveToOuterDisposeScope();
    }
}
