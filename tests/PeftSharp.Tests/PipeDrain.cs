namespace PeftSharp.Tests;

/// <summary>
/// Reads a child process's output to its end on a dedicated thread; <see cref="Result"/> waits for it. Unlike
/// ReadToEndAsync it needs no thread-pool thread, which a busy test host on a saturated CPU may not hand out for
/// minutes, so a chatty child never blocks on a full pipe.
/// </summary>
public sealed class PipeDrain
{
    readonly Thread _thread;
    string _text = "";

    PipeDrain(StreamReader reader)
    {
        _thread = new Thread(() => _text = reader.ReadToEnd()) { IsBackground = true, Name = "test-pipe-drain" };
        _thread.Start();
    }

    public static PipeDrain Start(StreamReader reader) => new(reader);

    /// <summary>Everything the child wrote, once it closed the pipe (exited).</summary>
    public string Result { get { _thread.Join(); return _text; } }
}
