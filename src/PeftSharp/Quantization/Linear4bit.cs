using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;
using static TorchSharp.torch.nn;

namespace PeftSharp.Quantization;

/// <summary>
/// bitsandbytes' <c>Linear4bit</c>: a frozen linear layer whose weight is stored as packed 4-bit codes plus a
/// <see cref="QuantState"/>. Each call dequantizes the weight into <see cref="ComputeDType"/> and runs
/// <c>F.linear</c>; the result is cast back to the input dtype. Gradients reach the input, never the weight.
/// Its state_dict has bnb's keys: <c>weight</c> (uint8 [(n+1)/2, 1]), <c>weight.absmax</c>, <c>weight.quant_map</c>,
/// [<c>weight.nested_absmax</c>, <c>weight.nested_quant_map</c>], <c>weight.quant_state.bitsandbytes__nf4|fp4</c>, [<c>bias</c>].
/// </summary>
public sealed class Linear4bit : Module<Tensor, Tensor>
{
    // Fields are registered by name: "weight" (a buffer: it must not become trainable) and "bias".
    Tensor weight;
    Parameter? bias;

    public QuantState QuantState { get; }
    public ScalarType ComputeDType { get; set; }
    public long InFeatures => QuantState.Shape[1];
    public long OutFeatures => QuantState.Shape[0];
    public Tensor PackedWeight => weight;
    public Parameter? Bias => bias;

    public Linear4bit(Tensor packed, QuantState state, Tensor? bias = null, ScalarType computeDType = ScalarType.Float32) : base(nameof(Linear4bit))
    {
        if (state.Shape.Length != 2) throw new PeftSharpException($"Linear4bit needs a 2-D weight shape (found [{string.Join(", ", state.Shape)}])");
        if (packed.dtype != ScalarType.Byte || packed.numel() != (state.NumElements + 1) / 2)
            throw new PeftSharpException($"Linear4bit: packed weight must be uint8 with {(state.NumElements + 1) / 2} elements (found {packed.dtype}, {packed.numel()})");
        if (bias is not null && (bias.dim() != 1 || bias.shape[0] != state.Shape[0]))
            throw new PeftSharpException($"Linear4bit: bias must have {state.Shape[0]} elements (found [{string.Join(", ", bias.shape)}])");
        weight = packed.DetachFromDisposeScope();
        this.bias = bias is null ? null : new Parameter(bias.detach().DetachFromDisposeScope(), requires_grad: false);
        QuantState = state;
        ComputeDType = computeDType;
        RegisterComponents();
    }

    /// <summary>Quantizes a linear layer's weight (and keeps its bias) as transformers does on load.</summary>
    public static Linear4bit Quantize(Tensor weight, Tensor? bias, QuantType type, bool doubleQuant, int blocksize = 64, ScalarType computeDType = ScalarType.Float32)
    {
        var (packed, state) = Bnb4bit.Quantize(weight, type, blocksize, doubleQuant);
        return new Linear4bit(packed, state, bias, computeDType);
    }

    /// <summary>The weight as <paramref name="dtype"/> (default: the compute dtype), shape [out, in].</summary>
    public Tensor Dequantize(ScalarType? dtype = null) => Bnb4bit.Dequantize(weight, QuantState, dtype ?? ComputeDType);

    /// <summary>The dtype the weight had before quantization (the quant state's <c>dtype</c>).</summary>
    public ScalarType OriginalDType => Bnb4bit.ParseDType(QuantState.DType, "quant_state dtype");

    /// <summary>A plain float <c>Linear</c> with the dequantized weight (default: the original dtype) and the bias, on the same device.</summary>
    public Linear ToLinear(ScalarType? dtype = null)
    {
        var dt = dtype ?? OriginalDType;
        var linear = nn.Linear(InFeatures, OutFeatures, hasBias: bias is not null, device: weight.device, dtype: dt);
        using var _ = no_grad();
        using (var w = Dequantize(dt)) linear.weight!.copy_(w);
        if (bias is not null) linear.bias!.copy_(bias);
        linear.weight!.requires_grad = false;
        if (linear.bias is not null) linear.bias.requires_grad = false;
        return linear;
    }

    public override Tensor forward(Tensor x)
    {
        using var scope = NewDisposeScope();
        var w = Dequantize();
        var xc = x.dtype == ComputeDType ? x : x.to(ComputeDType);
        var b = bias is null ? null : bias.dtype == ComputeDType ? bias : bias.to(ComputeDType);
        var y = functional.linear(xc, w, b);
        if (y.dtype != x.dtype) y = y.to(x.dtype);
        return y.MoveToOuterDisposeScope();
    }

    /// <summary>Adds the quant state tensors next to <c>weight</c>, as bnb's <c>_save_to_state_dict</c> does.</summary>
    public override Dictionary<string, Tensor> state_dict(Dictionary<string, Tensor>? destination = null, string? prefix = null)
    {
        destination = base.state_dict(destination, prefix);
        var w = string.IsNullOrEmpty(prefix) ? "weight" : $"{prefix}.weight";
        foreach (var (suffix, t) in QuantState.StateDictEntries()) destination.TryAdd($"{w}.{suffix}", t);
        return destination;
    }

    protected override void _toEpilog(ScalarType? dtype, Device? device, bool non_blocking)
    {
        base._toEpilog(dtype, device, non_blocking);
        if (device is not null) QuantState.To(device);
    }

    protected override void Dispose(bool disposing)
    {
        if (disposing) QuantState.Dispose();
        base.Dispose(disposing);
    }

    public override string ToString() =>
        $"Linear4bit(in_features={InFeatures}, out_features={OutFeatures}, bias={bias is not null}, quant_type={QuantState.QuantType.Name()}, blocksize={QuantState.Blocksize}, double_quant={QuantState.Nested}, compute_dtype={ComputeDType})";
}
