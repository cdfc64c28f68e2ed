using System.Text.RegularExpressions;
using PeftSharp.Models;
using PeftSharp.Tuners;

namespace PeftSharp.Inference.Serving;

/// <summary>
/// The adapters a server knows (name → folder) and which of them are loaded into the model: at most
/// <see cref="ServingOptions.MaxLoras"/>, evicting the least recently used one that no running sequence
/// uses. Adapters of a method whose rows can mix in one batch (<see cref="MethodCapabilities.MixedBatch"/>: LoRA)
/// live in one <see cref="PeftModel"/> so a batch applies each row's adapter in one pass. Every other adapter
/// (prompt family, AdapterHub, bottleneck, a second mixable method, ...) gets a PeftModel of its own over the same
/// base model and runs in batches of one adapter (<see cref="Solo"/>); their layers compute the base output in the
/// mixed batches. Not thread-safe: the engine calls it under its model lock.
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
    }

    static readonly Regex NamePattern = new("^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$", RegexOptions.CultureInvariant);

    readonly PreTrainedModel _model;
    readonly int _maxLoras;
    readonly Dictionary<string, Entry> _known = new(StringComparer.Ordinal);
    long _clock;
    bool _soloActive;

    public AdapterRegistry(PreTrainedModel model, int maxLoras)
    {
        if (maxLoras < 1) throw new PeftConfigException($"max_loras must be >= 1 (found {maxLoras})");
        _model = model;
        _maxLoras = maxLoras;
    }

    /// <summary>The model with adapter wrappers, once the first adapter was loaded.</summary>
    public PeftModel? Peft { get; private set; }

    public IEnumerable<string> Names => _known.Keys;
    public bool Contains(string name) => _known.ContainsKey(name);
    public int LoadedCount => _known.Values.Count(e => e.Loaded);
    public long LoadedBytes => _known.Values.Where(e => e.Loaded).Sum(e => e.Bytes);
    public bool IsLoaded(string name) => _known.TryGetValue(name, out var e) && e.Loaded;
    /// <summary>True for adapters that share the mixed batch (LoRA); false for those served one adapter per batch.</summary>
    public bool IsBatched(string name) => _known[name].Batched;

    /// <summary>
    /// The loaded PeftModel of a non-batched adapter, made the only active adapter in every adapter layer of the
    /// model (the LoRA layers then compute their base output), ready for a forward.
    /// </summary>
    public PeftModel Solo(string name)
    {
        var peft = _known[name].Solo ?? throw new PeftSharpException($"adapter '{name}' is not loaded");
        SetActiveEverywhere(new[] { name });
        _soloActive = true;
        return peft;
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

    // The mixed batch holds adapters of one method whose rows can mix (the first such method registered, LoRA in practice):
    // their layers apply each row's adapter in one pass. Others get a PeftModel of their own.
    bool SharesBatch(PeftConfig config) =>
        PeftMethods.For(config).Capabilities.MixedBatch
        && (_known.Values.FirstOrDefault(e => e.Batched)?.PeftType ?? config.PeftType) == config.PeftType;

    public static void ValidateName(string name)
    {
        if (name == RowAdapters.Base || !NamePattern.IsMatch(name))
            throw ServingException.BadRequest($"adapter name '{name}' must be 1-64 letters, digits, '_' or '-' (starting with a letter or digit) and not {RowAdapters.Base}", "lora_name");
    }

    /// <summary>Registers and loads an adapter folder (loading checks it now, not at the first request).</summary>
    public void Register(string name, string dir)
    {
        ValidateName(name);
        if (_known.ContainsKey(name)) throw new ServingException(400, $"adapter '{name}' is already loaded", "lora_name");
        var config = PeftMethods.LoadConfig(dir);
        _known[name] = new Entry(dir, config.PeftType, SharesBatch(config));
        try { TryLoad(name); }
        catch { _known.Remove(name); throw; }
    }

    /// <summary>Forgets an adapter; refused while sequences use it.</summary>
    public void Unregister(string name)
    {
        if (!_known.TryGetValue(name, out var e)) throw new ServingException(404, $"adapter '{name}' is not loaded", "lora_name");
        if (e.ActiveRows > 0) throw new ServingException(409, $"adapter '{name}' is serving {e.ActiveRows} request(s); unload it when they finish", "lora_name");
        if (e.Loaded) Evict(name, e);
        _known.Remove(name);
    }

    /// <summary>
    /// Makes <paramref name="name"/> resident, unloading the least recently used idle adapter when the cap
    /// is reached. False when every resident adapter is in use (the request waits).
    /// </summary>
    public bool TryLoad(string name)
    {
        var e = _known[name];
        e.LastUsed = ++_clock;
        if (e.Loaded) return true;
        if (LoadedCount >= _maxLoras)
        {
            var victim = _known.Where(p => p.Value.Loaded && p.Value.ActiveRows == 0).OrderBy(p => p.Value.LastUsed).FirstOrDefault();
            if (victim.Value is null) return false;
            Evict(victim.Key, victim.Value);
        }
        PeftModel peft;
        if (!e.Batched) peft = e.Solo = PeftModel.FromPretrained(_model, e.Dir, name);
        else if (Peft is null) peft = Peft = PeftModel.FromPretrained(_model, e.Dir, name);
        else (peft = Peft).LoadAdapter(e.Dir, name);
        e.Loaded = true;
        e.Bytes = peft.AdapterStateDict(name).Values.Sum(t => t.numel() * t.ElementSize);
        return true;
    }

    void Evict(string name, Entry e)
    {
        (e.Solo ?? Peft!).DeleteAdapter(name);
        e.Solo = null;
        e.Loaded = false;
        e.Bytes = 0;
    }

    public void AddUse(string name) { if (_known.TryGetValue(name, out var e)) e.ActiveRows++; }
    public void RemoveUse(string name) { if (_known.TryGetValue(name, out var e)) e.ActiveRows--; }

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
