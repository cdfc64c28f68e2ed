using PeftSharp.Models;
using PeftSharp.Tuners;
using TorchSharp;
using static TorchSharp.torch;

namespace PeftSharp.Inference.Serving;

/// <summary>
/// The running batch, owned by the engine's worker thread: the mixed batch (one batched KV cache, rows aligned on
/// the right, each row's adapter gathered once per row set) and the groups of non-batched adapters, with the
/// steps that advance them: prefill joiners, decode one token for every running row, emit, sweep finished rows
/// out of the batch and the cache. A failed step fails the rows in it, never the engine.
/// </summary>
internal sealed class BatchRunner(PreTrainedModel model, AdapterRegistry adapters, object modelLock, ServingCounters counters) : IDisposable
{
    readonly PreTrainedModel _model = model;
    readonly AdapterRegistry _adapters = adapters;
    readonly object _modelLock = modelLock;
    readonly ServingCounters _counters = counters;
    readonly List<BatchRow> _rows = new();
    readonly List<SoloGroup> _solo = new();
    KVCache? _cache;
    /// <summary>The running batch's per-row adapters, kept while its rows stay the same (layers cache their rows' A/B in it).</summary>
    RowAdapters? _decodeRows;
    // Undisposed TorchSharp objects of each step, collected on the engine thread at most every 200 ms.
    readonly Runtime.PeriodicCollector _collector = new();

    public Device Device => _model.Device;
    /// <summary>Sequences running (mixed batch and groups).</summary>
    public int Active => _rows.Count + _solo.Sum(g => g.Rows.Count);
    public bool Idle => _rows.Count == 0 && _solo.Count == 0;

    /// <summary>Prefills joining rows: the mixed ones together into the batch, the others as new groups of one adapter and one prompt length.</summary>
    public void Join(List<BatchRow> joiners)
    {
        var mixed = joiners.Where(r => !r.Solo).ToList();
        if (mixed.Count > 0) Prefill(mixed);
        foreach (var group in joiners.Where(r => r.Solo).GroupBy(r => (r.Adapter, r.Prompt.Length)))
            SoloStep(new SoloGroup(group.Key.Adapter, group.ToList()));
    }

    /// <summary>One token for every running request, whichever kind of batch it is in.</summary>
    public void Advance()
    {
        Sweep();
        if (_rows.Count > 0) { DecodeStep(); Sweep(); }
        foreach (var group in _solo.ToList()) SoloStep(group);
    }

    /// <summary>After a step failed outside the per-group guards: fails the mixed batch's rows and drops its cache.</summary>
    public void FailRunning(Exception e)
    {
        foreach (var r in _rows) _counters.Fail(r.Pending, e);
        foreach (var r in _rows) Release(r);
        _rows.Clear();
        ResetBatch();
        UpdateBatchSize();
    }

    /// <summary>Cancels every running row (shutdown).</summary>
    public void CancelAll()
    {
        foreach (var r in _rows) r.Cancelled = true;
        Sweep();
        foreach (var g in _solo.ToList())
        {
            foreach (var r in g.Rows) r.Cancelled = true;
            SweepSolo(g);
        }
    }

    public void Dispose() => ResetBatch();

    void ResetBatch()
    {
        _cache?.Dispose();
        _cache = null;
        InvalidateRows();
    }

    void InvalidateRows()
    {
        _decodeRows?.Dispose();
        _decodeRows = null;
    }

    void UpdateBatchSize() => Volatile.Write(ref _counters.BatchSize, _rows.Count + _solo.Sum(g => g.Rows.Count));

    void Prefill(List<BatchRow> joiners)
    {
        using var scope = NewDisposeScope();
        using var noGrad = no_grad();
        var device = _model.Device;
        int width = joiners.Max(r => r.Prompt.Length);
        var ids = new long[joiners.Count * width];
        var mask = new long[joiners.Count * width];
        for (int i = 0; i < joiners.Count; i++)
        {
            var r = joiners[i];
            int pad = width - r.Prompt.Length;
            r.Pad = pad;
            for (int c = 0; c < width; c++)
            {
                ids[i * width + c] = c < pad ? (r.Options.PadTokenId ?? 0) : r.Prompt[c - pad];
                mask[i * width + c] = c < pad ? 0 : 1;
            }
            Interlocked.Add(ref _counters.PromptTokens, r.Prompt.Length);
        }
        var maskT = tensor(mask, new long[] { joiners.Count, width }).to(device);
        var cache = _model.NewCache();
        // The joiners' per-row adapter weights, gathered by this forward, join the running batch's (no re-gather).
        var joinRows = new RowAdapters(joiners.Select(r => r.Adapter).ToList(), device);
        Tensor logits;
        try
        {
            var inputs = new ModelInputs
            {
                InputIds = tensor(ids, new long[] { joiners.Count, width }).to(device),
                AttentionMask = maskT,
                PositionIds = AttentionMasks.PositionIdsFromMask(maskT),
                Cache = cache,
            };
            logits = Forward(inputs, joinRows).Logits.select(1, -1);
            Emit(joiners, logits);
        }
        catch (Exception e)
        {
            // Only the joining requests fail; the running batch is untouched.
            foreach (var r in joiners) { _counters.Fail(r.Pending, e); Release(r); }
            cache.Dispose();
            joinRows.Dispose();
            return;
        }
        try
        {
            if (_cache is null) { _cache = cache; cache = null; }
            else
            {
                var (padRunning, padNew) = _cache.AppendRows(cache);
                foreach (var r in _rows) r.Pad += padRunning;
                foreach (var r in joiners) r.Pad += padNew;
            }
            var joined = _rows.Count == 0 ? joinRows : _decodeRows?.Concat(joinRows);
            if (joined != joinRows) joinRows.Dispose();
            InvalidateRows();
            _decodeRows = joined;
            _rows.AddRange(joiners);
            UpdateBatchSize();
        }
        finally { cache?.Dispose(); }
    }

    void DecodeStep()
    {
        using var scope = NewDisposeScope();
        using var noGrad = no_grad();
        var device = _model.Device;
        long width = _cache!.SeqLength + 1;
        int batch = _rows.Count;
        var last = _rows.Select(r => (long)r.Tokens[^1]).ToArray();
        var pads = _rows.Select(r => r.Pad).ToArray();
        var positions = _rows.Select(r => (long)r.Tokens.Count - 1).ToArray();
        var maskT = (arange(width, dtype: ScalarType.Int64).unsqueeze(0) >= tensor(pads).unsqueeze(1)).to(ScalarType.Int64).to(device);
        var inputs = new ModelInputs
        {
            InputIds = tensor(last, new long[] { batch, 1 }).to(device),
            AttentionMask = maskT,
            PositionIds = tensor(positions, new long[] { batch, 1 }).to(device),
            Cache = _cache,
        };
        _decodeRows ??= new RowAdapters(_rows.Select(r => r.Adapter).ToList(), device);
        var logits = Forward(inputs, _decodeRows).Logits.select(1, -1);
        Interlocked.Increment(ref _counters.Steps);
        Emit(_rows, logits);
    }

    ModelOutput Forward(ModelInputs inputs, RowAdapters rows)
    {
        lock (_modelLock)
        {
            _adapters.PrepareMixed();
            var peft = _adapters.Peft;
            return peft is null ? _model.Forward(inputs) : peft.Forward(inputs, rows);
        }
    }

    // ---- groups of one non-batched adapter ----

    /// <summary>Prefills a new group (no cache yet) or decodes one token for a running one; a failure fails that group only.</summary>
    void SoloStep(SoloGroup g)
    {
        bool prefill = g.Cache is null;
        try
        {
            using var scope = NewDisposeScope();
            using var noGrad = no_grad();
            var device = _model.Device;
            int n = g.Rows.Count, seq = g.Rows[0].Tokens.Count;
            var ids = g.Rows.SelectMany(r => prefill ? r.Tokens.Select(t => (long)t) : new[] { (long)r.Tokens[^1] }).ToArray();
            var positions = prefill ? arange(seq, dtype: ScalarType.Int64).unsqueeze(0).expand(n, -1) : full(n, 1, seq - 1, ScalarType.Int64);
            Tensor logits;
            lock (_modelLock)
            {
                var peft = _adapters.Solo(g.Adapter);
                g.Cache ??= peft.NewCache();
                logits = peft.Forward(new ModelInputs
                {
                    InputIds = tensor(ids, new long[] { n, prefill ? seq : 1 }).to(device),
                    AttentionMask = ones(n, seq, ScalarType.Int64).to(device),
                    PositionIds = positions.to(device),
                    Cache = g.Cache,
                }).Logits;
            }
            if (prefill)
            {
                foreach (var r in g.Rows) Interlocked.Add(ref _counters.PromptTokens, r.Prompt.Length);
                _solo.Add(g);
                UpdateBatchSize();
            }
            else Interlocked.Increment(ref _counters.Steps);
            Emit(g.Rows, logits.select(1, -1));
            SweepSolo(g);
        }
        catch (Exception e)
        {
            foreach (var r in g.Rows) { _counters.Fail(r.Pending, e); Release(r); }
            g.Rows.Clear();
            SweepSolo(g);
        }
    }

    void SweepSolo(SoloGroup g)
    {
        var keep = CompleteDone(g.Rows);
        if (g.Rows.Count == 0)
        {
            g.Dispose();
            _solo.Remove(g);
        }
        else if (keep is not null)
            using (var scope = NewDisposeScope()) g.Cache!.SelectRows(tensor(keep).to(_model.Device));
        UpdateBatchSize();
    }

    /// <summary>Picks each row's next token (one argmax for plain greedy rows, the row's own processors, constraint and generator otherwise) and streams it.</summary>
    void Emit(IReadOnlyList<BatchRow> rows, Tensor logits)
    {
        logits = logits.to(ScalarType.Float32);
        var greedy = logits.argmax(-1).cpu().data<long>().ToArray();
        int count = 0;
        for (int i = 0; i < rows.Count; i++)
        {
            var r = rows[i];
            if (r.Done) continue;
            int token = r.State.PicksOwnTokens ? r.State.Choose(logits.narrow(0, i, 1)) : (int)greedy[i];
            var delta = r.State.Accept(token, lastStep: false);
            var logprob = r.Logprobs is null ? null : r.State.LastLogprob;
            if (logprob is { } lp) r.Logprobs!.Add(lp);
            count++;
            r.Pending.Channel.Writer.TryWrite(new ServedToken(token, delta) { Logprob = logprob });
        }
        _counters.AddGenerated(count);
    }

    /// <summary>Completes finished and cancelled rows and removes them from the batch and the cache.</summary>
    void Sweep()
    {
        var keep = CompleteDone(_rows);
        if (keep is null) return;
        var kept = _rows.Count == 0 ? null : _decodeRows?.Select(keep);
        InvalidateRows();
        _decodeRows = kept;
        UpdateBatchSize();
        if (_rows.Count == 0) { ResetBatch(); return; }
        using (var scope = NewDisposeScope()) _cache!.SelectRows(tensor(keep).to(_model.Device));
        long drop = _rows.Min(r => r.Pad);
        _cache!.DropLeft(drop);
        foreach (var r in _rows) r.Pad -= drop;
        if (Interlocked.Read(ref _counters.Steps) % 256 == 255) Runtime.TorchRuntime.CollectAndTrim();
        else _collector.Tick();
    }

    /// <summary>Completes the finished and cancelled rows and removes them from <paramref name="rows"/>; returns the kept rows' old indices, or null when none finished.</summary>
    long[]? CompleteDone(List<BatchRow> rows)
    {
        foreach (var r in rows)
            if (!r.Done && r.Pending.Token.IsCancellationRequested) r.Cancelled = true;
        if (!rows.Any(r => r.Done)) return null;
        var keep = Enumerable.Range(0, rows.Count).Where(i => !rows[i].Done).Select(i => (long)i).ToArray();
        var done = rows.Where(r => r.Done).ToList();
        var kept = keep.Select(i => rows[(int)i]).ToList();
        rows.Clear();
        rows.AddRange(kept);
        // The metrics show the slots free before a client can observe its completion.
        UpdateBatchSize();
        foreach (var r in done)
        {
            var tokens = r.State.NewTokens.ToArray();
            _counters.Complete(r.Pending, new ServedCompletion(r.Prompt, tokens, r.Options.Decode?.Invoke(tokens), r.State.Reason ?? FinishReason.Length, r.Cancelled) { Logprobs = r.Logprobs });
            Release(r);
        }
        return keep;
    }

    void Release(BatchRow r)
    {
        r.Dispose();
        if (r.Adapter != RowAdapters.Base) _adapters.RemoveUse(r.Adapter);
    }
}
