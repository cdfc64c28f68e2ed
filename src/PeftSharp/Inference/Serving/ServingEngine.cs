using System.Diagnostics;
using System.Text;
using System.Text.Json.Nodes;
using System.Threading.Channels;
using PeftSharp.Models;
using PeftSharp.Tokenization;
using PeftSharp.Tokenization.ChatTemplates;
using PeftSharp.Tuners;
using TorchSharp;
using static TorchSharp.torch;

namespace PeftSharp.Inference.Serving;

/// <summary>
/// Continuous batching over one base model and many LoRA adapters (S-LoRA/Punica/vLLM style). A single
/// worker thread owns the model: between decode steps it admits queued requests (prefilling them together,
/// left-padded) and drops finished or cancelled ones, so requests join and leave a running batch. Every step
/// is one forward where row i uses its request's adapter (<see cref="PeftModel.Forward(ModelInputs, IReadOnlyList{string})"/>:
/// each LoRA layer gathers its rows' A/B once per row set), never a merge and never a loop over adapters.
/// Adapters of other methods (prompt tuning, p-tuning, prefix tuning, LLaMA-Adapter, AdapterHub, ...) change the
/// inputs, the cache or the layers in ways rows cannot share: their requests run in groups of their own (one
/// adapter, one prompt length, so no padding and the forward a request gets alone), each group advancing one
/// token per worker iteration like the mixed batch.
/// </summary>
/// <remarks>
/// KV cache: one batched cache, rows aligned on the right. A joining group is prefilled into its own cache,
/// then the shorter of the two caches is left-padded with zero columns and the rows concatenated
/// (<see cref="KVCache.AppendRows"/>); each row's padding is masked out and its positions are its own token
/// count, so a row computes what it computes alone (up to float summation order, as transformers' left-padded
/// batches). When rows leave, columns that are padding for every remaining row are dropped. The alternative,
/// one cache per sequence stacked at each step, would copy the whole cache every token.
/// </remarks>
public sealed class ServingEngine : IDisposable
{
    readonly PreTrainedModel _model;
    readonly AdapterRegistry _adapters;
    readonly object _modelLock = new();
    readonly object _queueLock = new();
    readonly object _tokenizerLock = new();
    readonly LinkedList<Pending> _queue = new();
    readonly List<Row> _rows = new();
    readonly List<SoloGroup> _solo = new();
    readonly SemaphoreSlim _signal = new(0);
    readonly Thread _worker;
    readonly IReadOnlyList<int> _eos;
    readonly int? _pad;
    readonly Func<IReadOnlyList<int>, string>? _decode;
    readonly Stopwatch _clock = Stopwatch.StartNew();
    readonly Queue<(long Ms, int Tokens)> _recent = new();
    KVCache? _cache;
    /// <summary>The running batch's per-row adapters, kept while its rows stay the same (layers cache their rows' A/B in it).</summary>
    RowAdapters? _decodeRows;
    volatile bool _accepting = true;
    volatile bool _stopping;
    long _requests, _finished, _cancelled, _rejected, _promptTokens, _generated, _steps;
    // Undisposed TorchSharp objects of each step, collected on the engine thread at most every 200 ms.
    readonly Runtime.PeriodicCollector _collector = new();

    /// <param name="generationDefaults">eos/pad ids from generation_config.json (see <see cref="GenerationOptions.WithGenerationConfig"/>).</param>
    public ServingEngine(PreTrainedModel model, ServingOptions? options = null, HfTokenizer? tokenizer = null, GenerationOptions? generationDefaults = null)
    {
        if (!model.IsCausalLM) throw new PeftSharpException($"{model.GetType().Name} is not a causal language model; serving needs one");
        Options = options ?? new ServingOptions();
        if (Options.MaxBatchSize < 1 || Options.MaxQueue < 0 || Options.MaxTokensLimit < 1 || Options.MaxPromptBytes < 1)
            throw new PeftConfigException($"serving limits must be positive (max batch {Options.MaxBatchSize}, queue {Options.MaxQueue}, max tokens {Options.MaxTokensLimit}, max prompt bytes {Options.MaxPromptBytes})");
        _model = model;
        _model.eval();
        _adapters = new AdapterRegistry(model, Options.MaxLoras);
        Tokenizer = tokenizer;
        _eos = generationDefaults?.EosTokenIds ?? model.Config.EosTokenIds;
        _pad = generationDefaults?.PadTokenId ?? model.Config.PadTokenId;
        // Decoding reads only immutable tables, so the worker never waits for a request being tokenized.
        if (tokenizer is not null) _decode = ids => tokenizer.Decode(ids, skipSpecialTokens: true);
        ContextLength = model.Config.ContextLength;
        _worker = new Thread(WorkerLoop) { IsBackground = true, Name = "peft-serving" };
        _worker.Start();
    }

    /// <summary>Loads a model folder (its tokenizer when present, its generation_config.json) and the given adapters.</summary>
    public static ServingEngine FromFolder(string modelDir, ServingOptions? options = null, IEnumerable<(string Name, string Dir)>? adapters = null, Device? device = null, ScalarType dtype = ScalarType.Float32)
    {
        var model = AutoModel.FromPretrained(modelDir, device, dtype);
        var tokenizer = File.Exists(Path.Combine(modelDir, HfTokenizer.TokenizerFile)) ? HfTokenizer.FromFolder(modelDir) : null;
        options ??= new ServingOptions();
        options = options with { ModelName = options.ModelName ?? Path.GetFileName(Path.GetFullPath(modelDir).TrimEnd(Path.DirectorySeparatorChar)) };
        var engine = new ServingEngine(model, options, tokenizer, new GenerationOptions().WithGenerationConfig(modelDir));
        try { foreach (var (name, dir) in adapters ?? Array.Empty<(string, string)>()) engine.LoadAdapter(name, dir); }
        catch { engine.Dispose(); throw; }
        return engine;
    }

    public ServingOptions Options { get; }
    public PreTrainedModel Model => _model;
    /// <summary>Null for a folder without tokenizer.json: such a server takes token ids only.</summary>
    public HfTokenizer? Tokenizer { get; }
    /// <summary>The base model's name in requests (OpenAI's "model"); <see cref="RowAdapters.Base"/> is accepted too.</summary>
    public string ModelName => Options.ModelName ?? "base";
    /// <summary>Positions the model has (max_position_embeddings / n_positions): prompt plus max_tokens must fit.</summary>
    public int ContextLength { get; }

    // ---- adapters ----

    /// <summary>Adapter names the engine serves (loaded now or loadable on demand).</summary>
    public IReadOnlyList<string> AdapterNames => _adapters.Names;

    public bool IsLoaded(string adapter) => _adapters.IsLoaded(adapter);

    /// <summary>True for the base model's names and for known adapters.</summary>
    public bool Serves(string model)
    {
        return IsBase(model) || _adapters.Contains(model);
    }

    public bool IsBase(string model) => model == ModelName || model == RowAdapters.Base;

    /// <summary>
    /// Adds an adapter folder (trusted path, e.g. from the command line) and loads it, subject to the cap. The
    /// folder is read before the model lock is taken, so a slow or hostile file never stalls the running batch.
    /// </summary>
    public void LoadAdapter(string name, string dir)
    {
        AdapterRegistry.ValidateName(name);
        if (IsBase(name)) throw ServingException.BadRequest($"adapter name '{name}' is the base model's name; pick another", "lora_name");
        if (_adapters.Contains(name)) throw ServingException.BadRequest($"adapter '{name}' is already loaded; unload it first or pick another name", "lora_name");
        using var prepared = AdapterRegistry.Prepare(dir);
        lock (_modelLock) _adapters.Register(name, prepared);
        Signal();
    }

    /// <summary>vLLM's /v1/load_lora_adapter: <paramref name="path"/> must stay inside <see cref="ServingOptions.AdapterRoot"/>.</summary>
    public void LoadAdapterFromRoot(string name, string path)
    {
        AdapterRegistry.ValidateName(name);
        if (IsBase(name)) throw ServingException.BadRequest($"adapter name '{name}' is the base model's name; pick another", "lora_name");
        LoadAdapter(name, AdapterRegistry.ConfinedPath(Options.AdapterRoot, path));
    }

    public void UnloadAdapter(string name)
    {
        lock (_modelLock) _adapters.Unregister(name);
    }

    // ---- requests ----

    /// <summary>Chat messages (role/content objects) through the model's chat template (or <see cref="ServingOptions"/>' built-in one).</summary>
    public IReadOnlyList<int> EncodeChat(JsonArray messages, string? template = null)
    {
        var tokenizer = RequireTokenizer("messages");
        long bytes = 0;
        foreach (var m in messages)
            if (m is JsonObject o && o["content"] is JsonValue c && c.TryGetValue<string>(out var text)) bytes += Encoding.UTF8.GetByteCount(text);
        CheckPromptBytes(bytes, "messages");
        lock (_tokenizerLock) return ChatPrompt.Encode(tokenizer, messages, addGenerationPrompt: true, template: template ?? Options.ChatTemplate);
    }


    public IReadOnlyList<int> Encode(string text)
    {
        var tokenizer = RequireTokenizer("prompt");
        CheckPromptBytes(Encoding.UTF8.GetByteCount(text), "prompt");
        lock (_tokenizerLock) return tokenizer.Encode(text);
    }

    /// <summary>Refuses text over <see cref="ServingOptions.MaxPromptBytes"/> before any tokenizer work.</summary>
    void CheckPromptBytes(long bytes, string field)
    {
        if (bytes > Options.MaxPromptBytes)
            throw ServingException.BadRequest($"the {field} has {bytes} bytes of text; this server accepts at most {Options.MaxPromptBytes} (--max-prompt-bytes)", field);
    }

    public string Decode(IReadOnlyList<int> ids) => _decode?.Invoke(ids) ?? throw new ServingException(400, "this model folder has no tokenizer.json");

    HfTokenizer RequireTokenizer(string what) => Tokenizer ?? throw ServingException.BadRequest(
        $"the model folder has no tokenizer.json, so {what} must be token ids (a list of integers)", what);

    /// <summary>Queues a request. Throws <see cref="ServingException"/> for invalid requests, a full queue (429) or shutdown (503).</summary>
    public ServingHandle Submit(ServingRequest request, CancellationToken cancellationToken = default)
    {
        if (!_accepting) throw new ServingException(503, "the server is shutting down");
        var options = Validate(request);
        var channel = Channel.CreateUnbounded<ServedToken>(new UnboundedChannelOptions { SingleReader = true, SingleWriter = true });
        var pending = new Pending(request, options, channel, cancellationToken);
        lock (_queueLock)
        {
            if (_queue.Count >= Options.MaxQueue)
            {
                Interlocked.Increment(ref _rejected);
                throw new ServingException(429, $"the request queue is full ({Options.MaxQueue} waiting); retry later");
            }
            _queue.AddLast(pending);
        }
        Interlocked.Increment(ref _requests);
        Interlocked.Increment(ref _outstanding);
        Signal();
        return new ServingHandle(channel, pending.Done.Task);
    }

    /// <summary>Runs a request to the end.</summary>
    public Task<ServedCompletion> GenerateAsync(ServingRequest request, CancellationToken cancellationToken = default) =>
        Submit(request, cancellationToken).Completion;

    GenerationOptions Validate(ServingRequest request)
    {
        var adapter = IsBase(request.Adapter) ? RowAdapters.Base : request.Adapter;
        if (adapter != RowAdapters.Base && !Serves(adapter))
            throw new ServingException(404, $"the model '{request.Adapter}' does not exist (serving: {string.Join(", ", new[] { ModelName }.Concat(AdapterNames))})", "model", "model_not_found");
        if (request.PromptIds.Count == 0) throw ServingException.BadRequest("the prompt is empty", "prompt");
        int vocab = _model.Config.VocabSize;
        foreach (var id in request.PromptIds)
            if (id < 0 || id >= vocab) throw ServingException.BadRequest($"token id {id} is outside the vocabulary [0, {vocab})", "prompt");
        var o = request.Options;
        if (o.MaxNewTokens < 1 || o.MaxNewTokens > Options.MaxTokensLimit)
            throw ServingException.BadRequest($"max_tokens must be in [1, {Options.MaxTokensLimit}] (found {o.MaxNewTokens})", "max_tokens");
        if ((long)request.PromptIds.Count + o.MaxNewTokens > ContextLength)
            throw ServingException.BadRequest($"this model's maximum context length is {ContextLength} tokens; the prompt has {request.PromptIds.Count} and max_tokens is {o.MaxNewTokens}", "max_tokens");
        if (o.StopStrings.Count > 0 && o.Decode is null && _decode is null)
            throw ServingException.BadRequest("stop strings need the model's tokenizer.json, which is missing", "stop");
        var resolved = o with { Decode = o.Decode ?? _decode, EosTokenIds = o.EosTokenIds ?? _eos, PadTokenId = o.PadTokenId ?? _pad };
        try { resolved.Validate(); }
        catch (PeftConfigException e) { throw ServingException.BadRequest(e.Message); }
        return resolved;
    }

    // ---- shutdown and metrics ----

    /// <summary>Stops taking requests, lets queued and running ones finish for up to <paramref name="drain"/>, then cancels the rest.</summary>
    public async Task StopAsync(TimeSpan drain)
    {
        _accepting = false;
        Signal();
        var deadline = _clock.Elapsed + drain;
        while (_clock.Elapsed < deadline && Volatile.Read(ref _outstanding) > 0) await Task.Delay(10);
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
        ResetBatch();
        _signal.Dispose();
    }

    int _batchSize;
    /// <summary>Accepted requests not yet completed (queued, being admitted, or running).</summary>
    int _outstanding;
    int QueueLength { get { lock (_queueLock) return _queue.Count; } }

    public ServingMetrics Metrics()
    {
        double tps;
        lock (_recent)
        {
            Trim(_clock.ElapsedMilliseconds);
            long span = _recent.Count == 0 ? 0 : Math.Max(1000, _clock.ElapsedMilliseconds - _recent.Peek().Ms);
            tps = span == 0 ? 0 : _recent.Sum(r => r.Tokens) * 1000.0 / span;
        }
        int loaded = _adapters.LoadedCount; long bytes = _adapters.LoadedBytes;
        return new ServingMetrics(Interlocked.Read(ref _requests), Interlocked.Read(ref _finished), Interlocked.Read(ref _cancelled), Interlocked.Read(ref _rejected),
            QueueLength, Volatile.Read(ref _batchSize), Interlocked.Read(ref _promptTokens), Interlocked.Read(ref _generated), tps, loaded, bytes, Interlocked.Read(ref _steps));
    }

    void Trim(long now) { while (_recent.Count > 0 && now - _recent.Peek().Ms > 10_000) _recent.Dequeue(); }

    void Signal()
    {
        try { if (_signal.CurrentCount == 0) _signal.Release(); }
        catch (ObjectDisposedException) { }
    }

    // ---- the worker ----

    sealed class Pending(ServingRequest request, GenerationOptions options, Channel<ServedToken> channel, CancellationToken token)
    {
        public readonly ServingRequest Request = request;
        public readonly GenerationOptions Options = options;
        public readonly Channel<ServedToken> Channel = channel;
        public readonly CancellationToken Token = token;
        public readonly TaskCompletionSource<ServedCompletion> Done = new(TaskCreationOptions.RunContinuationsAsynchronously);
        public string Adapter => Request.Adapter;
    }

    /// <summary>A sequence in the running batch.</summary>
    sealed class Row : IDisposable
    {
        public Row(Pending p, string adapter, bool solo, Device device)
        {
            Pending = p;
            Adapter = adapter;
            Solo = solo;
            Prompt = p.Request.PromptIds.ToArray();
            Tokens = Prompt.ToList();
            Stops = new StopStringMatcher(p.Options.StopStrings, p.Options.Decode);
            Detokenizer = p.Options.Decode is { } d ? new IncrementalDetokenizer(d) : null;
            Eos = p.Options.EosTokenIds!.ToHashSet();
            Rng = p.Options.Seed is ulong seed ? new torch.Generator(seed, device) : null;
        }

        public readonly Pending Pending;
        public readonly string Adapter;
        /// <summary>Served in a group of its own adapter (<see cref="SoloGroup"/>), not in the mixed batch.</summary>
        public readonly bool Solo;
        public readonly int[] Prompt;
        public readonly List<int> Tokens;
        public readonly List<int> New = new();
        public readonly StopStringMatcher Stops;
        public readonly IncrementalDetokenizer? Detokenizer;
        public readonly HashSet<int> Eos;
        public torch.Generator? Rng;
        /// <summary>Zero columns before this row's first cached position.</summary>
        public long Pad;
        public FinishReason? Reason;
        public bool Cancelled;
        public GenerationOptions Options => Pending.Options;
        public bool Done => Reason is not null || Cancelled;
        /// <summary>Needs more than an argmax over raw logits.</summary>
        public bool Processed => Options.DoSample || Options.RepetitionPenalty != 1.0;

        public void Dispose() { Rng?.Dispose(); Rng = null; }
    }

    void WorkerLoop()
    {
        while (true)
        {
            try
            {
                if (_stopping) { CancelAll(); return; }
                var joiners = Admit();
                var mixed = joiners.Where(r => !r.Solo).ToList();
                if (mixed.Count > 0) Prefill(mixed);
                foreach (var group in joiners.Where(r => r.Solo).GroupBy(r => (r.Adapter, r.Prompt.Length)))
                    SoloStep(new SoloGroup(group.Key.Adapter, group.ToList()));
                Sweep();
                if (_rows.Count > 0) { DecodeStep(); Sweep(); }
                // Every running request advances one token per iteration, whichever kind of batch it is in.
                foreach (var group in _solo.ToList()) SoloStep(group);
                if (_rows.Count == 0 && _solo.Count == 0) _signal.Wait(joiners.Count > 0 ? 0 : 50);
            }
            catch (Exception e)
            {
                // A failed step fails the sequences in it, never the server.
                foreach (var r in _rows) Fail(r.Pending, e);
                foreach (var r in _rows) Release(r);
                _rows.Clear();
                ResetBatch();
                UpdateBatchSize();
            }
        }
    }

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

    void UpdateBatchSize() => Volatile.Write(ref _batchSize, _rows.Count + _solo.Sum(g => g.Rows.Count));

    /// <summary>Takes the queued requests that fit; the queue lock is held only to copy and trim the queue (loading an adapter reads files meanwhile).</summary>
    List<Row> Admit()
    {
        var joiners = new List<Row>();
        List<Pending> waiting;
        lock (_queueLock)
        {
            if (_queue.Count == 0) return joiners;
            waiting = _queue.ToList();
        }
        var leaving = new List<Pending>();
        foreach (var p in waiting)
        {
            if (p.Token.IsCancellationRequested)
            {
                leaving.Add(p);
                Complete(p, p.Request.PromptIds.ToArray(), Array.Empty<int>(), null, FinishReason.Length, cancelled: true);
            }
            else if (_rows.Count + _solo.Sum(g => g.Rows.Count) + joiners.Count < Options.MaxBatchSize && Reserve(p, out var adapter, out var solo))
            {
                leaving.Add(p);
                joiners.Add(new Row(p, adapter, solo, _model.Device));
            }
            else if (p.Done.Task.IsCompleted) leaving.Add(p);
        }
        if (leaving.Count > 0)
            lock (_queueLock) foreach (var p in leaving) _queue.Remove(p);
        return joiners;
    }

    bool Reserve(Pending p, out string adapter, out bool solo)
    {
        adapter = IsBase(p.Adapter) ? RowAdapters.Base : p.Adapter;
        solo = false;
        if (adapter == RowAdapters.Base) return true;
        if (!_adapters.Contains(adapter))
        {
            Fail(p, new ServingException(404, $"the adapter '{adapter}' was unloaded before the request ran", "model", "model_not_found"));
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
            Fail(p, e);
            return false;
        }
        finally { prepared?.Dispose(); }
        _adapters.AddUse(adapter);
        solo = !_adapters.IsBatched(adapter);
        return true;
    }

    void Prefill(List<Row> joiners)
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
            Interlocked.Add(ref _promptTokens, r.Prompt.Length);
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
            foreach (var r in joiners) { Fail(r.Pending, e); Release(r); }
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
        Interlocked.Increment(ref _steps);
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

    /// <summary>
    /// Requests for one adapter that cannot share the mixed batch, with prompts of one length: the group is
    /// prefilled once and decoded like <see cref="TextGenerator"/> decodes one prompt (no padding, positions
    /// 0..n-1, the adapter's PeftModel forward with its virtual tokens or prefix in the group's own cache).
    /// Requests that arrive later form new groups; finished rows leave.
    /// </summary>
    sealed class SoloGroup(string adapter, List<Row> rows) : IDisposable
    {
        public readonly string Adapter = adapter;
        public readonly List<Row> Rows = rows;
        public KVCache? Cache;
        public void Dispose() { Cache?.Dispose(); Cache = null; }
    }

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
                foreach (var r in g.Rows) Interlocked.Add(ref _promptTokens, r.Prompt.Length);
                _solo.Add(g);
                UpdateBatchSize();
            }
            else Interlocked.Increment(ref _steps);
            Emit(g.Rows, logits.select(1, -1));
            SweepSolo(g);
        }
        catch (Exception e)
        {
            foreach (var r in g.Rows) { Fail(r.Pending, e); Release(r); }
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

    /// <summary>Picks each row's next token (one argmax for plain greedy rows, the row's own processors and generator otherwise) and streams it.</summary>
    void Emit(IReadOnlyList<Row> rows, Tensor logits)
    {
        logits = logits.to(ScalarType.Float32);
        var greedy = logits.argmax(-1).cpu().data<long>().ToArray();
        int count = 0;
        for (int i = 0; i < rows.Count; i++)
        {
            var r = rows[i];
            if (r.Done) continue;
            int token = (int)greedy[i];
            if (r.Processed)
            {
                using var scope = NewDisposeScope();
                var sequences = r.Options.RepetitionPenalty != 1.0 ? tensor(r.Tokens.Select(t => (long)t).ToArray(), new long[] { 1, r.Tokens.Count }) : null;
                var scores = LogitsProcessors.Process(logits.narrow(0, i, 1), sequences, r.Options);
                token = (int)LogitsProcessors.Choose(scores, r.Options, r.Rng).item<long>();
            }
            r.Tokens.Add(token);
            r.New.Add(token);
            count++;
            if (r.Eos.Contains(token)) r.Reason = FinishReason.Eos;
            else if (r.Stops.Active && r.Stops.Matches(r.Tokens)) r.Reason = FinishReason.StopString;
            else if (r.New.Count >= r.Options.MaxNewTokens) r.Reason = FinishReason.Length;
            var delta = r.Detokenizer?.Delta(r.New, r.Reason is not null);
            r.Pending.Channel.Writer.TryWrite(new ServedToken(token, delta));
        }
        Interlocked.Add(ref _generated, count);
        lock (_recent) { _recent.Enqueue((_clock.ElapsedMilliseconds, count)); Trim(_clock.ElapsedMilliseconds); }
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
        if (Interlocked.Read(ref _steps) % 256 == 255) Runtime.TorchRuntime.CollectAndTrim();
        else _collector.Tick();
    }

    /// <summary>Completes the finished and cancelled rows and removes them from <paramref name="rows"/>; returns the kept rows' old indices, or null when none finished.</summary>
    long[]? CompleteDone(List<Row> rows)
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
            Complete(r.Pending, r.Prompt, r.New.ToArray(), r.Options.Decode, r.Reason ?? FinishReason.Length, r.Cancelled);
            Release(r);
        }
        return keep;
    }

    void Release(Row r)
    {
        r.Dispose();
        if (r.Adapter != RowAdapters.Base) _adapters.RemoveUse(r.Adapter);
    }

    void Complete(Pending p, int[] prompt, int[] tokens, Func<IReadOnlyList<int>, string>? decode, FinishReason reason, bool cancelled)
    {
        p.Channel.Writer.TryComplete();
        if (!p.Done.TrySetResult(new ServedCompletion(prompt, tokens, decode?.Invoke(tokens), reason, cancelled))) return;
        if (cancelled) Interlocked.Increment(ref _cancelled);
        else Interlocked.Increment(ref _finished);
        Interlocked.Decrement(ref _outstanding);
    }

    void Fail(Pending p, Exception e)
    {
        p.Channel.Writer.TryComplete(e);
        if (!p.Done.TrySetException(e)) return;
        Interlocked.Increment(ref _finished);
        Interlocked.Decrement(ref _outstanding);
    }

    void CancelAll()
    {
        lock (_queueLock)
        {
            foreach (var p in _queue) Complete(p, p.Request.PromptIds.ToArray(), Array.Empty<int>(), null, FinishReason.Length, cancelled: true);
            _queue.Clear();
        }
        foreach (var r in _rows) { r.Cancelled = true; }
        Sweep();
        foreach (var g in _solo.ToList())
        {
            foreach (var r in g.Rows) r.Cancelled = true;
            SweepSolo(g);
        }
    }
}
