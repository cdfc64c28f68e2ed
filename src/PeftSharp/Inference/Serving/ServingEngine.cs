using PeftSharp.IO;
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
/// The serving facade: requests in (validated, tokenized, queued), adapters loaded and unloaded, metrics out. The
/// <see cref="ServingScheduler"/> admits queued requests between steps and the <see cref="BatchRunner"/> runs them.
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
    /// <summary>Held for every forward and every change to the model's adapters; never while reading a file or tokenizing.</summary>
    readonly object _modelLock = new();
    readonly object _tokenizerLock = new();
    readonly ServingCounters _counters = new();
    readonly ServingScheduler _scheduler;
    readonly IReadOnlyList<int> _eos;
    readonly int? _pad;
    readonly Func<IReadOnlyList<int>, string>? _decode;

    /// <param name="generationDefaults">eos/pad ids from generation_config.json (see <see cref="GenerationOptions.WithGenerationConfig"/>).</param>
    public ServingEngine(PreTrainedModel model, ServingOptions? options = null, HfTokenizer? tokenizer = null, GenerationOptions? generationDefaults = null)
    {
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
        if (_decode is { } decode) _jsonObjects = new Lazy<JsonConstraint>(() => JsonConstraint.FromDecoder(model.Config.VocabSize, decode));
        _scheduler = new ServingScheduler(Options, _adapters, _modelLock, new BatchRunner(model, _adapters, _modelLock, _counters), _counters, IsBase);
    }

    /// <summary>Loads a model folder (its tokenizer when present, its generation_config.json) and the given adapters.</summary>
    public static ServingEngine FromFolder(string modelDir, ServingOptions? options = null, IEnumerable<(string Name, string Dir)>? adapters = null, Device? device = null, ScalarType dtype = ScalarType.Float32)
    {
        var given = modelDir;
        modelDir = HfHubCache.ResolveFolder(modelDir);
        var model = AutoModel.FromPretrained(modelDir, device, dtype);
        var tokenizer = File.Exists(Path.Combine(modelDir, HfTokenizer.TokenizerFile)) ? HfTokenizer.FromFolder(modelDir) : null;
        options ??= new ServingOptions();
        // A repo id is served under its own name (as vLLM does), a folder under its folder name.
        var defaultName = given != modelDir ? given : Path.GetFileName(Path.GetFullPath(modelDir).TrimEnd(Path.DirectorySeparatorChar));
        options = options with { ModelName = options.ModelName ?? defaultName };
        var engine = new ServingEngine(model, options, tokenizer, new GenerationOptions().WithGenerationConfig(modelDir));
        try
        {
            engine._adapters.DeclareCompositionMembers(options.Compositions.SelectMany(c => AdapterComposition.Parse(c.Compose).Flatten()));
            foreach (var (name, dir) in adapters ?? Array.Empty<(string, string)>()) engine.LoadAdapter(name, dir);
            if (options.Compositions.Count > 0) engine._adapters.LoadFusions(options.FusionDirs);
            else if (options.FusionDirs.Count > 0) throw new PeftConfigException("a fusion layer (--fusion) is served through a composition: add --compose NAME=\"Fuse[a,b]\"");
            foreach (var (name, compose) in options.Compositions) engine._adapters.RegisterComposition(name, compose);
        }
        catch { engine.Dispose(); throw; }
        return engine;
    }

    public ServingOptions Options { get; }
    public PreTrainedModel Model => _model;
    /// <summary>Null for a folder without tokenizer.json: such a server takes token ids only.</summary>
    public HfTokenizer? Tokenizer { get; }
    /// <summary>The base model's name in requests (OpenAI's "model"); <see cref="RowAdapters.Base"/> is accepted too.</summary>
    public string ModelName => Options.ModelName ?? "base";
    /// <summary>Most alternatives a request may ask logprobs for (OpenAI's limit).</summary>
    public const int MaxTopLogprobs = 20;

    /// <summary>The JSON-object constraint over this model's vocabulary (built at its first use), or null without a tokenizer.</summary>
    JsonConstraint? JsonObjects => _jsonObjects?.Value;
    readonly Lazy<JsonConstraint>? _jsonObjects;

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

    /// <summary>The base model's name, then every adapter's.</summary>
    public IReadOnlyList<string> ModelNames() => new[] { ModelName }.Concat(AdapterNames).ToList();

    /// <summary>When the engine was created (OpenAI's "created" of its models).</summary>
    public DateTimeOffset StartedAt { get; } = DateTimeOffset.UtcNow;

    /// <summary>Generates text (a causal LM); false for encoders, which serve embeddings only.</summary>
    public bool CanGenerate => _model.IsCausalLM;

    /// <summary>
    /// Adds an adapter folder (trusted path, e.g. from the command line) and loads it, subject to the cap. The
    /// folder is read before the model lock is taken, so a slow or hostile file never stalls the running batch.
    /// </summary>
    public void LoadAdapter(string name, string dir)
    {
        AdapterRegistry.ValidateName(name);
        if (IsBase(name)) throw ServingException.BadRequest($"adapter name '{name}' is the base model's name; pick another", "lora_name");
        if (_adapters.Contains(name)) throw ServingException.BadRequest($"adapter '{name}' is already loaded; unload it first or pick another name", "lora_name");
        using var prepared = AdapterRegistry.Prepare(HfHubCache.ResolveFolder(dir, "adapter"));
        lock (_modelLock) _adapters.Register(name, prepared);
        _scheduler.Signal();
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


    /// <param name="field">The request field the text came in, named by errors.</param>
    public IReadOnlyList<int> Encode(string text, string field = "prompt")
    {
        var tokenizer = RequireTokenizer(field);
        CheckPromptBytes(Encoding.UTF8.GetByteCount(text), field);
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
        if (!_scheduler.Accepting) throw new ServingException(503, "the server is shutting down");
        var options = Validate(request);
        var channel = Channel.CreateUnbounded<ServedToken>(new UnboundedChannelOptions { SingleReader = true, SingleWriter = true });
        var pending = new PendingRequest(request, options, request.JsonObject ? JsonObjects : null, channel, cancellationToken);
        _scheduler.Enqueue(pending);
        return new ServingHandle(channel, pending.Done.Task);
    }

    /// <summary>Runs a request to the end.</summary>
    public Task<ServedCompletion> GenerateAsync(ServingRequest request, CancellationToken cancellationToken = default) =>
        Submit(request, cancellationToken).Completion;

    GenerationOptions Validate(ServingRequest request)
    {
        if (!CanGenerate)
            throw ServingException.BadRequest($"the model '{ModelName}' is an encoder ({_model.GetType().Name}); it serves /v1/embeddings only", "model");
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
        if (request.TopLogprobs is < -1 or > MaxTopLogprobs)
            throw ServingException.BadRequest($"top_logprobs must be in [0, {MaxTopLogprobs}] (found {request.TopLogprobs})", "top_logprobs");
        if (request.JsonObject) _ = JsonObjects ?? throw ServingException.BadRequest("response_format json_object needs the model's tokenizer.json, which is missing", "response_format");
        var resolved = o with { Decode = o.Decode ?? _decode, EosTokenIds = o.EosTokenIds ?? _eos, PadTokenId = o.PadTokenId ?? _pad };
        try { resolved.Validate(); }
        catch (PeftConfigException e) { throw ServingException.BadRequest(e.Message); }
        return resolved;
    }

    // ---- embeddings ----

    /// <summary>
    /// OpenAI's /v1/embeddings: each input's last hidden states mean-pooled over its tokens and L2-normalized (the
    /// pooling sentence-transformers uses for a model folder without modules.json, and OpenAI's unit-length vectors).
    /// Encoders (BERT) and causal models alike, the base model or a resident batched (LoRA) adapter. One input per
    /// forward, so no padding enters the pool; each forward holds the model lock between decode steps.
    /// </summary>
    public float[][] Embed(IReadOnlyList<IReadOnlyList<int>> inputs, string model)
    {
        var adapter = IsBase(model) ? RowAdapters.Base : model;
        if (adapter != RowAdapters.Base && (!_adapters.Contains(adapter) || !_adapters.IsBatched(adapter)))
            throw ServingException.BadRequest($"embeddings are served for the base model and LoRA adapters; '{model}' is not one", "model");
        int vocab = _model.Config.VocabSize;
        foreach (var ids in inputs)
        {
            if (ids.Count == 0) throw ServingException.BadRequest("an input is empty", "input");
            if (ids.Count > ContextLength) throw ServingException.BadRequest($"an input has {ids.Count} tokens; this model's maximum context length is {ContextLength}", "input");
            foreach (var id in ids)
                if (id < 0 || id >= vocab) throw ServingException.BadRequest($"token id {id} is outside the vocabulary [0, {vocab})", "input");
        }
        var result = new float[inputs.Count][];
        var device = _model.Device;
        for (int i = 0; i < inputs.Count; i++)
        {
            using var scope = NewDisposeScope();
            using var noGrad = no_grad();
            var ids = inputs[i];
            var input = new ModelInputs
            {
                InputIds = tensor(ids.Select(t => (long)t).ToArray(), new long[] { 1, ids.Count }).to(device),
                AttentionMask = ones(1, ids.Count, ScalarType.Int64).to(device),
            };
            Tensor hidden;
            lock (_modelLock)
            {
                if (adapter != RowAdapters.Base && !_adapters.IsLoaded(adapter))
                    throw new ServingException(503, $"adapter '{adapter}' is not resident right now (--max-loras); retry", "model");
                _adapters.PrepareMixed();
                using var rows = new RowAdapters(new[] { adapter }, device);
                var output = _adapters.Peft is { } peft ? peft.Forward(input, rows) : _model.Forward(input);
                hidden = output.LastHiddenState ?? throw new PeftSharpException($"{_model.GetType().Name} returns no hidden states to pool");
            }
            var pooled = hidden.to(ScalarType.Float32).mean(new long[] { 1 }).squeeze(0);
            pooled = pooled / pooled.norm().clamp_min(1e-12);
            result[i] = pooled.cpu().data<float>().ToArray();
        }
        return result;
    }

    // ---- shutdown and metrics ----

    /// <summary>Stops taking requests, lets queued and running ones finish for up to <paramref name="drain"/>, then cancels the rest.</summary>
    public Task StopAsync(TimeSpan drain) => _scheduler.StopAsync(drain);

    public void Dispose() => _scheduler.Dispose();

    public ServingMetrics Metrics()
    {
        var c = _counters;
        return new ServingMetrics(Interlocked.Read(ref c.Requests), Interlocked.Read(ref c.Finished), Interlocked.Read(ref c.Cancelled), Interlocked.Read(ref c.Rejected),
            _scheduler.QueueLength, Volatile.Read(ref c.BatchSize), Interlocked.Read(ref c.PromptTokens), Interlocked.Read(ref c.Generated), c.TokensPerSecond(),
            _adapters.LoadedCount, _adapters.LoadedBytes, Interlocked.Read(ref c.Steps));
    }
}
