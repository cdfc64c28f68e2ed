using static TorchSharp.torch;
using static TorchSharp.torch.nn;

namespace PeftSharp.Models;

/// <summary>Where a <see cref="BlockSlot"/> sits in its block (AdapterHub's location keys).</summary>
public enum SlotLocation
{
    /// <summary>After the self-attention output projection (AdapterHub's mh_adapter).</summary>
    Attention,
    /// <summary>After the feed-forward output (AdapterHub's output_adapter).</summary>
    Output,
}

/// <summary>
/// Seam 3 (DESIGN.md): the point where a sublayer's output meets its residual. The block calls
/// <see cref="Apply"/> instead of adding the residual itself; the base slot computes exactly what the model did
/// (<c>LN(h + x)</c> post-norm, <c>h + x</c> pre-norm). Bottleneck-family tuners replace the slot with a
/// subclass (ModuleSurgery), which may also read <paramref name="x"/> for adapters parallel to the sublayer.
/// It owns no parameters, so an unfilled slot adds no checkpoint keys.
/// </summary>
public class BlockSlot : nn.Module
{
    public BlockSlot(SlotLocation location, int layer, bool keysInParent = false) : this(location, layer, keysInParent, nameof(BlockSlot)) { }

    protected BlockSlot(SlotLocation location, int layer, bool keysInParent, string name) : base(name)
    {
        Location = location;
        Layer = layer;
        KeysInParent = keysInParent;
    }

    public SlotLocation Location { get; }

    /// <summary>Index of the block (AdapterDrop's leave_out counts these).</summary>
    public int Layer { get; }

    /// <summary>
    /// True where AdapterHub registers the slot's contents on the parent module itself (BERT's BertSelfOutput /
    /// BertOutput), false where it is a child of the block under its own name (attention_adapters / output_adapters).
    /// </summary>
    public bool KeysInParent { get; }

    /// <summary>The sublayer's output <paramref name="h"/> joined with the residual input <paramref name="x"/>.</summary>
    /// <param name="layerNorm">The sublayer's post-norm (BERT), or null where the block has none (pre-norm models).</param>
    public virtual Tensor Apply(Tensor h, Tensor x, Module<Tensor, Tensor>? layerNorm) =>
        layerNorm is null ? h + x : layerNorm.call(h + x);

    /// <summary>An empty slot at the same place (what unloading a tuner puts back).</summary>
    public BlockSlot Empty() => new(Location, Layer, KeysInParent);
}
