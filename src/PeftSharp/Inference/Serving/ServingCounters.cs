using System.Diagnostics;

namespace PeftSharp.Inference.Serving;

/// <summary>
/// The engine's counters (updated with Interlocked by the facade, the scheduler and the runner; read by /metrics)
/// and the tokens of the last 10 s; finishing a request moves them, so completion lives here too.
/// </summary>
internal sealed class ServingCounters
{
    public long Requests, Finished, Cancelled, Rejected, PromptTokens, Generated, Steps;
    /// <summary>Accepted requests not yet completed (queued, being admitted, or running).</summary>
    public int Outstanding;
    /// <summary>Sequences in the running batch and groups.</summary>
    public int BatchSize;
    readonly Stopwatch _clock = Stopwatch.StartNew();
    readonly Queue<(long Ms, int Tokens)> _recent = new();

    public void AddGenerated(int count)
    {
        Interlocked.Add(ref Generated, count);
        lock (_recent) { _recent.Enqueue((_clock.ElapsedMilliseconds, count)); Trim(_clock.ElapsedMilliseconds); }
    }

    /// <summary>Tokens generated per second over the last 10 s.</summary>
    public double TokensPerSecond()
    {
        lock (_recent)
        {
            Trim(_clock.ElapsedMilliseconds);
            long span = _recent.Count == 0 ? 0 : Math.Max(1000, _clock.ElapsedMilliseconds - _recent.Peek().Ms);
            return span == 0 ? 0 : _recent.Sum(r => r.Tokens) * 1000.0 / span;
        }
    }

    void Trim(long now) { while (_recent.Count > 0 && now - _recent.Peek().Ms > 10_000) _recent.Dequeue(); }

    /// <summary>Ends a request with its result (once; later calls do nothing).</summary>
    /// <remarks>Counted before the stream ends and the result is set, so a client that sees its completion sees it in the metrics too.</remarks>
    public void Complete(PendingRequest p, ServedCompletion result)
    {
        if (Interlocked.Exchange(ref p.Ended, 1) == 0)
        {
            if (result.Cancelled) Interlocked.Increment(ref Cancelled);
            else Interlocked.Increment(ref Finished);
            Interlocked.Decrement(ref Outstanding);
        }
        p.Channel.Writer.TryComplete();
        p.Done.TrySetResult(result);
    }

    /// <summary>Ends a request with an error (once).</summary>
    public void Fail(PendingRequest p, Exception e)
    {
        if (Interlocked.Exchange(ref p.Ended, 1) == 0)
        {
            Interlocked.Increment(ref Finished);
            Interlocked.Decrement(ref Outstanding);
        }
        p.Channel.Writer.TryComplete(e);
        p.Done.TrySetException(e);
    }
}
