namespace PeftSharp.Cli;

/// <summary>
/// The first Ctrl+C (SIGINT) asks a long command to stop at its next safe point (training: after the current step,
/// with a checkpoint); a second one ends the process as usual. SIGUSR1 asks the same: mpirun forwards it to every rank
/// (a Ctrl+C on mpirun instead terminates the ranks at once), and Slurm's <c>--signal=USR1@SECONDS</c> sends it before
/// a job's time runs out.
/// </summary>
public sealed class CtrlC : IDisposable
{
    readonly CancellationTokenSource _cts = new();
    readonly TextWriter _stderr;
    readonly string _what;
    readonly System.Runtime.InteropServices.PosixSignalRegistration? _usr1;
    bool _disposed;

    public CtrlC(TextWriter stderr, string what)
    {
        _stderr = stderr; _what = what;
        Console.CancelKeyPress += OnCancel;
        // PosixSignal takes a raw signal number where .NET names none: SIGUSR1 is 10 on Linux, 30 on macOS.
        int usr1 = OperatingSystem.IsLinux() ? 10 : OperatingSystem.IsMacOS() ? 30 : 0;
        if (usr1 != 0)
            _usr1 = System.Runtime.InteropServices.PosixSignalRegistration.Create((System.Runtime.InteropServices.PosixSignal)usr1, c =>
            {
                c.Cancel = true;
                Request("SIGUSR1");
            });
    }

    public CancellationToken Token => _cts.Token;

    void OnCancel(object? sender, ConsoleCancelEventArgs e)
    {
        if (_cts.IsCancellationRequested) return;
        e.Cancel = true;
        Request("Ctrl+C");
    }

    // A signal's handler runs on the thread pool and may come after the command ended (a rank that stopped because
    // another rank was asked first): then there is nothing left to stop.
    void Request(string by)
    {
        lock (_cts)
        {
            if (_disposed || _cts.IsCancellationRequested) return;
            _cts.Cancel();
        }
        _stderr.WriteLine(by == "Ctrl+C" ? $"Ctrl+C: {_what} (press it again to abort at once)" : $"{by}: {_what}");
    }

    public void Dispose()
    {
        Console.CancelKeyPress -= OnCancel;
        _usr1?.Dispose();
        lock (_cts) _disposed = true;
        _cts.Dispose();
    }
}
