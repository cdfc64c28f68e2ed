using static TorchSharp.torch;

namespace PeftSharp.Tuners;

/// <summary>
/// The state of the running forward that adapter layers read, instead of properties set on every layer before it: the
/// per-row adapters of a mixed batch (peft's adapter_names) and the dtype adapters compute in (torch.autocast's role in
/// the trainer's bf16 mode). Whoever runs the forward enters it once: <c>using var ctx = ForwardContext.Enter(rows)</c>.
/// It flows with the execution context, so forwards on other threads or tasks do not see it; a nested Enter replaces
/// what it sets and keeps the rest of the outer one, and disposing restores the outer one.
/// </summary>
public sealed class ForwardContext : IDisposable
{
    static readonly AsyncLocal<ForwardContext?> _current = new();
    readonly ForwardContext? _outer;
    bool _disposed;

    ForwardContext(RowAdapters? rows, ScalarType? autocastDtype, ForwardContext? outer)
    {
        Rows = rows;
        AutocastDtype = autocastDtype;
        _outer = outer;
    }

    /// <summary>The context of the running forward, or null outside one.</summary>
    public static ForwardContext? Current => _current.Value;

    /// <summary>Which adapter each row uses, or null (every row uses the active adapters).</summary>
    public RowAdapters? Rows { get; }

    /// <summary>The dtype adapter matmuls run in (their float32 weights cast per forward); null: their own dtype.</summary>
    public ScalarType? AutocastDtype { get; }

    public static ForwardContext Enter(RowAdapters? rows = null, ScalarType? autocastDtype = null)
    {
        var outer = _current.Value;
        var ctx = new ForwardContext(rows ?? outer?.Rows, autocastDtype ?? outer?.AutocastDtype, outer);
        _current.Value = ctx;
        return ctx;
    }

    public void Dispose()
    {
        if (_disposed) return;
        _disposed = true;
        _current.Value = _outer;
    }
}
