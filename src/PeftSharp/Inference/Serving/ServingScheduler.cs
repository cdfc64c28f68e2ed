using System.Diagnostics;
using PeftSharp.Tuners;

namespace PeftSharp.Inference.Serving;

/// <summary>
/// The request queue and the worker thread that owns the model: between steps it admits the queued requests that
/// fit (reserving their adapters; an evicted one is read back from disk before the model lock is taken), lets the
/// <see cref="BatchRunner"/> prefill and advance, sleeps when idle, and at shutdown cancels whatever is left.
/// </summary>
internal sealed class ServingScheduler : IDisposable
{
    readonly ServingOptions _options;
    readonly AdapterRegistry _adapters;
    readonly object _modelLock;
    readonly BatchRunner _runner;
    readonly ServingCounters _counters;
    readonly Func<string, bool> _isBase;
    readonly object _queueLock = new();
    readonly LinkedList<PendingRequest> _queue = new();
    readonly SemaphoreSlim _signal = new(0);
    readonly Thread _worker;
    volatile bool _accepting = true;
    volatile bool _stopping;

    public ServingScheduler(ServingOptions options, AdapterRegistry adapters, object modelLock, BatchRunner runner, ServingCounters counters, Func<string, bool> isBase)
    {
        (_options, _adapters, _modelLock, _runner, _counters, _isBase) = (options, adapters, modelLock, runner, counters, isBase);
        _worker = new Thread(WorkerLoop) { IsBackground = true, Name = "peft-serving" };
        _worker.Start();
    }

    public bool Accepting => _accepting;
    public int QueueLength { get { lock (_queueLock) return _queue.Count; } }

    /// <summary>Queues an accepted request; a full queue refuses it (429).</summary>
    public void Enqueue(PendingRequest pending)
    {
        lock (_queueLock)
        {
            if (_queue.Count >= _options.MaxQueue)
            {
                Interlocked.Increment(ref _counters.Rejected);
                throw new ServingException(429, $"the request queue is full ({_options.MaxQueue} waiting); retry later");
            }
            _queue.AddLast(pending);
        }
        Interlocked.Increment(ref _counters.Requests);
        Interlocked.Increment(ref _counters.Outstanding);
        Signal();
    }

    public void Signal()
    {
        try { if (_signal.CurrentCount == 0) _signal.Release(); }
        catch (ObjectDisposedException) { }
    }

    /// <summary>Stops taking requests, lets queued and running ones finish for up to <paramref name="drain"/>, then cancels the rest.</summary>
    public async Task StopAsync(TimeSpan drain)
    {
        _accepting = false;
        Signal();
        var clock = Stopwatch.StartNew();
        while (clock.Elapsed < drain && Volatile.Read(ref _counters.Outstanding) > 0) await Task.Delay(10);
        _stopping = true;
        Signal();
        await Task.Run(() => _worker.Join());
    }

    public void Dispose()
    {
        _accepting = false;
        _stopping = true;
        Signal();
        _worker.Join();
        _runner.Dispose();
        _signal.Dispose();
    }

    void WorkerLoop()
    {
        while (true)
        {
            try
            {
                if (_stopping) { CancelAll(); return; }
                var joiners = Admit();
                _runner.Join(joiners);
                _runner.Advance();
                if (_runner.Idle) _signal.Wait(joiners.Count > 0 ? 0 : 50);
            }
            catch (Exception e)
            {
                // A failed step fails the sequences in it, never the server.
                _runner.FailRunning(e);
            }
        }
    }

    /// <summary>Takes the queued requests that fit; the queue lock is held only to copy and trim the queue (loading an adapter reads files meanwhile).</summary>
    List<BatchRow> Admit()
    {
        var joiners = new List<BatchRow>();
        List<PendingRequest> waiting;
        lock (_queueLock)
        {
            if (_queue.Count == 0) return joiners;
            waiting = _queue.ToList();
        }
        var leaving = new List<PendingRequest>();
        foreach (var p in waiting)
        {
            if (p.Token.IsCancellationRequested)
            {
                leaving.Add(p);
                _counters.Complete(p, p.CancelledUnrun());
            }
            else if (_runner.Active + joiners.Count < _options.MaxBatchSize && Reserve(p, out var adapter, out var solo))
            {
                leaving.Add(p);
                joiners.Add(new BatchRow(p, adapter, solo, _runner.Device));
            }
            else if (p.Done.Task.IsCompleted) leaving.Add(p);
        }
        if (leaving.Count > 0)
            lock (_queueLock) foreach (var p in leaving) _queue.Remove(p);
        return joiners;
    }

    bool Reserve(PendingRequest p, out string adapter, out bool solo)
    {
        adapter = _isBase(p.Adapter) ? RowAdapters.Base : p.Adapter;
        solo = false;
        if (adapter == RowAdapters.Base) return true;
        if (!_adapters.Contains(adapter))
        {
            _counters.Fail(p, new ServingException(404, $"the adapter '{adapter}' was unloaded before the request ran", "model", "model_not_found"));
            return false;
        }
        AdapterRegistry.Prepared? prepared = null;
        try
        {
            // An evicted adapter is read back from its folder before the model lock is taken, and only when it can be made resident.
            if (_adapters.NeedsLoad(adapter) is { } dir)
            {
                if (!_adapters.HasRoom) return false;
                prepared = AdapterRegistry.Prepare(dir);
            }
            lock (_modelLock)
                if (!_adapters.TryLoad(adapter, prepared)) return false;
        }
        catch (Exception e)
        {
            _counters.Fail(p, e);
            return false;
        }
        finally { prepared?.Dispose(); }
        _adapters.AddUse(adapter);
        solo = !_adapters.IsBatched(adapter);
        return true;
    }

    void CancelAll()
    {
        lock (_queueLock)
        {
            foreach (var p in _queue) _counters.Complete(p, p.CancelledUnrun());
            _queue.Clear();
        }
        _runner.CancelAll();
    }
}
