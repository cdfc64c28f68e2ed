namespace PeftSharp.Runtime;

/// <summary>
/// Where long operations (model loading, dataset building, training, evaluation, quantization, merging) report how far
/// they are. Apps install one with <see cref="PeftProgress.Use"/>; the peft CLI draws progress bars on a terminal
/// and plain lines otherwise. The library itself never writes to the console.
/// </summary>
public interface IProgressSink
{
    /// <summary>Starts a stage of <paramref name="total"/> units (0 when unknown), e.g. ("tokenizing", 999, "rows").</summary>
    IProgressStage Begin(string description, long total, string unit);
}

/// <summary>One running stage; dispose it when the stage ends (or fails).</summary>
public interface IProgressStage : IDisposable
{
    /// <summary>Sets the units done so far and, optionally, the stage's key figure ("loss 1.234").</summary>
    void Report(long completed, string? metric = null);
}

/// <summary>The progress sink of the current async flow (none by default: reporting is then free).</summary>
public static class PeftProgress
{
    static readonly AsyncLocal<IProgressSink?> Current = new();

    /// <summary>Sends this flow's progress (and that of tasks and threads it starts) to <paramref name="sink"/> until disposed.</summary>
    public static IDisposable Use(IProgressSink? sink)
    {
        var previous = Current.Value;
        Current.Value = sink;
        return new Restore(previous);
    }

    /// <summary>Starts a stage on the current sink; a no-op stage when there is none.</summary>
    public static IProgressStage Begin(string description, long total, string unit) =>
        Current.Value?.Begin(description, total, unit) ?? NoStage.Instance;

    sealed class Restore(IProgressSink? previous) : IDisposable
    {
        public void Dispose() => Current.Value = previous;
    }

    sealed class NoStage : IProgressStage
    {
        public static readonly NoStage Instance = new();
        public void Report(long completed, string? metric = null) { }
        public void Dispose() { }
    }
}
