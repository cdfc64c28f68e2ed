namespace PeftSharp.Cli;

/// <summary>
/// The first Ctrl+C (SIGINT) asks a long command to stop at its next safe point (training: after the current step,
/// with a checkpoint); a second one ends the process as usual.
/// </summary>
public sealed class CtrlC : IDisposable
{
    readonly CancellationTokenSource _cts = new();
    readonly TextWriter _stderr;
    readonly string _what;

    public CtrlC(TextWriter stderr, string what)
    {
        _stderr = stderr; _what = what;
        Console.CancelKeyPress += OnCancel;
    }

    public CancellationToken Token => _cts.Token;

    void OnCancel(object? sender, ConsoleCancelEventArgs e)
    {
        if (_cts.IsCancellationRequested) return;
        e.Cancel = true;
        _cts.Cancel();
        _stderr.WriteLine($"Ctrl+C: {_what} (press it again to abort at once)");
    }

    public void Dispose()
    {
        Console.CancelKeyPress -= OnCancel;
        _cts.Dispose();
    }
}
