using System.Text.RegularExpressions;
using PeftSharp.IO;
using PeftSharp.Models;
using PeftSharp.Tuners;
using TorchSharp;
using static TorchSharp.torch;

namespace PeftSharp.Inference.Serving;

/// <summary>
/// The adapters a server knows (name → folder) and which of them are loaded into the model: at most
/// <see cref="ServingOptions.MaxLoras"/>, evicting the least recently used one that no running sequence
/// uses. Adapters of every method whose rows can mix in one batch (<see cref="MethodCapabilities.MixedBatch"/>: LoRA,
/// IA³, VeRA, ...) live in one mixed <see cref="PeftModel"/> over the base, so a batch applies each row's adapter in one
/// pass whatever its method. The others (prompt family, AdapterHub, bottleneck) change the inputs or attention and get
/// a PeftModel of their own, run in batches of one adapter (<see cref="Solo"/>); their layers compute the base output in
/// the mixed batches. Two adapters of module-replacing methods on one module are refused at load (one line naming
/// both and the module), never silently half-applied. Name queries are thread-safe; loading, evicting and forwards run under the engine's model lock,
/// and files are read before it is taken (<see cref="Prepare"/>).
/// </summary>
internal sealed class AdapterRegistry
{
    sealed class Entry(string dir, string peftType, bool batched)
    {
        public string Dir { get; } = dir;
        public string PeftType { get; } = peftType;
        public bool Batched { get; } = batched;
        /// <summary>The PeftModel of a loaded adapter that is not batched with the LoRA ones.</summary>
        public PeftModel? Solo;
        public bool Loaded;
        public long Bytes;
        public long LastUsed;
        public int ActiveRows;
        /// <summary>A composition's text (served over its members' shared PeftModel); null for an adapter.</summary>
        public string? Compose;
        /// <summary>Never evicted: a composition and the adapters it combines.</summary>
        public bool Pinned;
    }

    /// <summary>An adapter folder read from disk, ready to inject without touching the disk again (<see cref="Prepare"/>).</summary>
    public sealed class Prepared(string dir, PeftConfig config, Dictionary<string, Tensor>? weights) : IDisposable
    {
        public string Dir { get; } = dir;
        public PeftConfig Config { get; } = config;
        /// <summary>The safetensors weights; null for methods with a folder format of their own, read at injection.</summary>
        public Dictionary<string, Tensor>? Weights { get; } = weights;
        public void Dispose() { foreach (var t in Weights?.Values ?? Enumerable.Empty<Tensor>()) t.Dispose(); }
    }

    static readonly Regex NamePattern = new("^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$", RegexOptions.CultureInvariant);

    readonly PreTrainedModel _model;
    readonly int _maxLoras;
    readonly Dictionary<string, Entry> _known = new(StringComparer.Ordinal);
    /// <summary>Guards <see cref="_known"/> so that name queries never wait for a forward (which holds the engine's model lock).</summary>
    readonly object _sync = new();
    long _clock;
    bool _soloActive;
    /// <summary>Adapters some composition combines: they share <see cref="_compositionPeft"/> (the first one loaded creates it).</summary>
    readonly HashSet<string> _compositionMembers = new(StringComparer.Ordinal);
    PeftModel? _compositionPeft;

    public AdapterRegistry(PreTrainedModel model, int maxLoras)
    {
        if (maxLoras < 1) throw new PeftConfigException($"max_loras must be >= 1 (found {maxLoras})");
        _model = model;
        _maxLoras = maxLoras;
    }

    /// <summary>The model with adapter wrappers, once the first adapter was loaded.</summary>
    public PeftModel? Peft { get; private set; }

    public IReadOnlyList<string> Names { get { lock (_sync) return _known.Keys.ToList(); } }
    public bool Contains(string name) { lock (_sync) return _known.ContainsKey(name); }
    /// <summary>Resident adapters (compositions are views over their members and count nothing).</summary>
    public int LoadedCount { get { lock (_sync) return _known.Values.Count(e => e.Loaded && e.Compose is null); } }
    public long LoadedBytes { get { lock (_sync) return _known.Values.Where(e => e.Loaded).Sum(e => e.Bytes); } }
    public bool IsLoaded(string name) { lock (_sync) return _known.TryGetValue(name, out var e) && e.Loaded; }
    /// <summary>True for adapters that share the mixed batch (LoRA); false for those served one adapter per batch.</summary>
    public bool IsBatched(string name) { lock (_sync) return _known[name].Batched; }
    /// <summary>Whether one more adapter can be made resident now (a free slot, or an idle one to evict).</summary>
    public bool HasRoom { get { lock (_sync) return LoadedCount < _maxLoras || _known.Values.Any(e => e.Loaded && e.ActiveRows == 0 && !e.Pinned); } }
    /// <summary>The folder of a known adapter that is not resident (it must be <see cref="Prepare"/>d before <see cref="TryLoad"/>), else null.</summary>
    public string? NeedsLoad(string name) { lock (_sync) return _known.TryGetValue(name, out var e) && !e.Loaded ? e.Dir : null; }

    /// <summary>
    /// The loaded PeftModel of a non-batched adapter, made the only active adapter in every adapter layer of the
    /// model (the LoRA layers then compute their base output), ready for a forward. Call under the model lock.
    /// </summary>
    public PeftModel Solo(string name)
    {
        PeftModel? peft;
        lock (_sync) peft = _known[name].Solo;
        if (peft is null) throw new PeftSharpException($"adapter '{name}' is not loaded");
        string? compose;
        lock (_sync) compose = _known[name].Compose;
        SetActiveEverywhere(compose is null ? new[] { name } : Array.Empty<string>());
        if (compose is not null) AdapterComposition.Apply(peft, compose, null);
        _soloActive = true;
        return peft;
    }

    /// <summary>Before the adapters load: these names will be combined by compositions, so they share one PeftModel.</summary>
    public void DeclareCompositionMembers(IEnumerable<string> names)
    {
        lock (_sync) _compositionMembers.UnionWith(names);
    }

    /// <summary>Loads saved AdapterFusion layers into the compositions' shared PeftModel (its adapters loaded first).</summary>
    public void LoadFusions(IReadOnlyList<string> dirs)
    {
        if (dirs.Count == 0) return;
        if (_compositionPeft is null) throw new PeftConfigException("--fusion needs the composed adapters loaded (--adapter NAME=DIR for each name in --compose)");
        AdapterComposition.LoadFusions(_compositionPeft, dirs);
    }

    /// <summary>
    /// Serves <paramref name="compose"/> (e.g. <c>Fuse[a,b]</c>) under <paramref name="name"/>: a request for it runs
    /// with that composition active over the member adapters, which must be loaded AdapterHub adapters.
    /// </summary>
    public void RegisterComposition(string name, string compose)
    {
        ValidateName(name);
        var where = $"--compose {name}={compose}";
        lock (_sync)
        {
            if (_known.ContainsKey(name)) throw new PeftConfigException($"{where}: the name '{name}' is already an adapter's");
            foreach (var member in AdapterComposition.Parse(compose).Flatten().Distinct())
            {
                if (!_known.TryGetValue(member, out var e)) throw new PeftConfigException($"{where}: no adapter '{member}' (load it with --adapter {member}=DIR)");
                if (e.Batched || e.Solo != _compositionPeft)
                    throw new PeftConfigException($"{where}: '{member}' is a {e.PeftType} adapter; compositions combine AdapterHub adapters");
            }
            // Activating it once checks the blocks against the loaded adapters and fusion layers now, not at the first request.
            AdapterComposition.Apply(_compositionPeft, compose, null);
            SetActiveEverywhere(Array.Empty<string>());
            _known[name] = new Entry("", "composition", batched: false) { Solo = _compositionPeft, Compose = compose, Loaded = true, Pinned = true };
        }
    }

    /// <summary>Before a mixed-batch forward: no non-batched adapter stays active, so its layers compute the base output.</summary>
    public void PrepareMixed()
    {
        if (!_soloActive) return;
        SetActiveEverywhere(Array.Empty<string>());
        _soloActive = false;
    }

    void SetActiveEverywhere(string[] names)
    {
        foreach (var layer in _model.modules().OfType<IAdapterLayer>()) layer.SetActiveAdapters(names);
    }

    // The mixed container holds every adapter whose rows can mix: each layer applies its adapters to their rows in one pass.
    static bool SharesBatch(PeftConfig config) => PeftMethods.For(config).Capabilities.MixedBatch;

    public static void ValidateName(string name)
    {
        if (name == RowAdapters.Base || !NamePattern.IsMatch(name))
            throw ServingException.BadRequest($"adapter name '{name}' must be 1-64 letters, digits, '_' or '-' (starting with a letter or digit) and not {RowAdapters.Base}", "lora_name");
    }

    /// <summary>
    /// Reads an adapter folder (config and weights) without any lock held: every entry must be a regular file,
    /// so a FIFO or device named like an adapter file is refused instead of blocking the reader.
    /// </summary>
    public static Prepared Prepare(string dir)
    {
        if (!Directory.Exists(dir)) throw new PeftFormatException(dir, "adapter folder not found");
        FileKinds.RequireRegularFiles(dir);
        var config = PeftMethods.LoadConfig(dir) with { InferenceMode = true };
        if (PeftMethods.For(config) is IAdapterFolderFormat) return new Prepared(dir, config, null);
        var path = Path.Combine(dir, AdapterFiles.WeightsFile);
        if (!File.Exists(path)) throw new PeftFormatException(dir, $"no {AdapterFiles.WeightsFile} in the adapter folder");
        using var file = SafetensorsFile.Open(path);
        var weights = new Dictionary<string, Tensor>();
        try { foreach (var key in file.Keys) weights[key] = file.Load(key); }
        catch { foreach (var t in weights.Values) t.Dispose(); throw; }
        return new Prepared(dir, config, weights);
    }

    /// <summary>Registers and loads a prepared adapter folder (loading checks it now, not at the first request).</summary>
    public void Register(string name, Prepared prepared)
    {
        ValidateName(name);
        lock (_sync)
        {
            if (_known.ContainsKey(name)) throw new ServingException(400, $"adapter '{name}' is already loaded; unload it first or pick another name", "lora_name");
            _known[name] = new Entry(prepared.Dir, prepared.Config.PeftType, SharesBatch(prepared.Config));
            try { TryLoad(name, prepared); }
            catch { _known.Remove(name); throw; }
        }
    }

    /// <summary>Forgets an adapter; refused while sequences use it.</summary>
    public void Unregister(string name)
    {
        lock (_sync)
        {
            if (!_known.TryGetValue(name, out var e)) throw new ServingException(404, $"adapter '{name}' is not loaded", "lora_name");
            if (e.ActiveRows > 0) throw new ServingException(409, $"adapter '{name}' is serving {e.ActiveRows} request(s); unload it when they finish", "lora_name");
            if (e.Pinned && e.Compose is null) throw new ServingException(409, $"adapter '{name}' is part of a composition served by this server", "lora_name");
            if (e.Compose is not null) { _known.Remove(name); return; }
            if (e.Loaded) Evict(name, e);
            _known.Remove(name);
        }
    }

    /// <summary>
    /// Makes <paramref name="name"/> resident from <paramref name="prepared"/> (needed unless it is resident already),
    /// unloading the least recently used idle adapter when the cap is reached. False when every resident adapter
    /// is in use (the request waits). Call under the model lock; it reads no file (but for folder formats).
    /// </summary>
    public bool TryLoad(string name, Prepared? prepared)
    {
        lock (_sync)
        {
            var e = _known[name];
            e.LastUsed = ++_clock;
            if (e.Loaded) return true;
            if (prepared is null) throw new InvalidOperationException($"adapter '{name}' must be prepared before it is loaded");
            if (LoadedCount >= _maxLoras)
            {
                var victim = _known.Where(p => p.Value.Loaded && p.Value.ActiveRows == 0 && !p.Value.Pinned).OrderBy(p => p.Value.LastUsed).FirstOrDefault();
                if (victim.Value is null) return false;
                Evict(victim.Key, victim.Value);
            }
            PeftModel peft;
            if (!e.Batched && _compositionMembers.Contains(name))
            {
                // Composed adapters live in one PeftModel, where the composition blocks can reach all of them.
                if (_compositionPeft is null) _compositionPeft = PeftModel.Create(_model, prepared.Config, name);
                else _compositionPeft.AddAdapter(name, prepared.Config);
                peft = e.Solo = _compositionPeft;
                e.Pinned = true;
            }
            else if (!e.Batched) peft = e.Solo = PeftModel.Create(_model, prepared.Config, name);
            else if (Peft is null) peft = Peft = PeftModel.Create(_model, prepared.Config, name);
            else (peft = Peft).AddAdapter(name, prepared.Config);
            try
            {
                if (prepared.Weights is null) peft.LoadWeights(prepared.Dir, name);
                else peft.LoadState(prepared.Weights.ToDictionary(kv => kv.Key, kv => (Func<Tensor>)(() => kv.Value.alias())), name, Path.Combine(prepared.Dir, AdapterFiles.WeightsFile));
            }
            catch
            {
                peft.DeleteAdapter(name);
                if (!e.Batched) e.Solo = null;
                throw;
            }
            peft.eval();
            e.Loaded = true;
            e.Bytes = peft.AdapterStateDict(name).Values.Sum(t => t.numel() * t.ElementSize);
            return true;
        }
    }

    void Evict(string name, Entry e)
    {
        (e.Solo ?? Peft!).DeleteAdapter(name);
        e.Solo = null;
        e.Loaded = false;
        e.Bytes = 0;
    }

    public void AddUse(string name) { lock (_sync) if (_known.TryGetValue(name, out var e)) e.ActiveRows++; }
    public void RemoveUse(string name) { lock (_sync) if (_known.TryGetValue(name, out var e)) e.ActiveRows--; }

    /// <summary>
    /// Resolves a runtime-loaded adapter path inside <paramref name="root"/>: relative only, no "..", and after
    /// following every symbolic link (of the folder, its parents and its files) still inside the root.
    /// </summary>
    public static string ConfinedPath(string? root, string path)
    {
        if (root is null) throw new ServingException(403, "loading adapters at run time is off: start the server with --adapter-root DIR", "lora_path");
        if (string.IsNullOrWhiteSpace(path)) throw ServingException.BadRequest("lora_path is empty", "lora_path");
        if (Path.IsPathRooted(path) || path.Contains(':'))
            throw ServingException.BadRequest($"lora_path '{path}' must be relative to the adapter root", "lora_path");
        var parts = path.Split('/', '\\');
        if (parts.Any(p => p == ".."))
            throw ServingException.BadRequest($"lora_path '{path}' must not contain '..'", "lora_path");
        var realRoot = RealPath(Path.GetFullPath(root));
        var full = RealPath(Path.GetFullPath(Path.Combine(realRoot, path)));
        if (!Inside(realRoot, full)) throw ServingException.BadRequest($"lora_path '{path}' leaves the adapter root", "lora_path");
        if (!Directory.Exists(full)) throw new ServingException(404, $"lora_path '{path}' is not a folder under the adapter root", "lora_path");
        foreach (var file in Directory.EnumerateFiles(full))
            if (!Inside(realRoot, RealPath(file))) throw ServingException.BadRequest($"lora_path '{path}': {Path.GetFileName(file)} links outside the adapter root", "lora_path");
        return full;
    }

    static bool Inside(string root, string path) =>
        path == root || path.StartsWith(root.EndsWith(Path.DirectorySeparatorChar) ? root : root + Path.DirectorySeparatorChar, StringComparison.Ordinal);

    /// <summary>The path with every symbolic link along it followed (like realpath); missing tails are kept as they are.</summary>
    static string RealPath(string path)
    {
        var root = Path.GetPathRoot(path)!;
        var current = root;
        var rest = path[root.Length..].Split(Path.DirectorySeparatorChar, StringSplitOptions.RemoveEmptyEntries);
        for (int i = 0; i < rest.Length; i++)
        {
            var next = Path.Combine(current, rest[i]);
            FileSystemInfo info = Directory.Exists(next) ? new DirectoryInfo(next) : new FileInfo(next);
            if (info.Exists && info.LinkTarget is not null)
            {
                var target = info.ResolveLinkTarget(returnFinalTarget: true)!.FullName;
                next = RealPath(Path.GetFullPath(target));
            }
            current = next;
        }
        return current;
    }
}
