using System.Text.Json;
using static TorchSharp.torch;

namespace PeftSharp.IO;

/// <summary>
/// The weights of a Hugging Face model folder: a single <c>model.safetensors</c> or shards listed in
/// <c>model.safetensors.index.json</c>. Gives one name → tensor view over all files.
/// </summary>
public sealed class Checkpoint : IDisposable
{
    public const string SingleFile = "model.safetensors";
    public const string IndexFile = "model.safetensors.index.json";

    readonly Dictionary<string, SafetensorsFile> _byTensor = new();
    readonly List<SafetensorsFile> _files = new();

    public string Directory { get; }
    public IEnumerable<string> Keys => _byTensor.Keys;
    public bool Contains(string name) => _byTensor.ContainsKey(name);
    public IReadOnlyList<SafetensorsFile> Files => _files;

    Checkpoint(string dir) => Directory = dir;

    public static bool Exists(string dir) =>
        File.Exists(Path.Combine(dir, SingleFile)) || File.Exists(Path.Combine(dir, IndexFile));

    public static Checkpoint Open(string dir)
    {
        var cp = new Checkpoint(dir);
        try
        {
            var index = Path.Combine(dir, IndexFile);
            var single = Path.Combine(dir, SingleFile);
            if (File.Exists(index)) cp.OpenSharded(index);
            else if (File.Exists(single)) cp.Add(SafetensorsFile.Open(single));
            else if (System.IO.Directory.EnumerateFiles(dir, "*.bin").Any())
                throw new PeftFormatException(dir, "only PyTorch pickle (.bin) weights found; PeftSharp never unpickles. Convert them to safetensors (e.g. save_pretrained(..., safe_serialization=True)).");
            else
                throw new PeftFormatException(dir, $"no {SingleFile} or {IndexFile} in the folder");
            return cp;
        }
        catch { cp.Dispose(); throw; }
    }

    void Add(SafetensorsFile f, ISet<string>? only = null)
    {
        _files.Add(f);
        foreach (var k in f.Keys)
        {
            if (only is not null && !only.Contains(k)) continue;
            if (!_byTensor.TryAdd(k, f))
                throw new PeftFormatException(f.FilePath, $"tensor '{k}' also appears in {_byTensor[k].FilePath}");
        }
    }

    void OpenSharded(string index)
    {
        Dictionary<string, string> map;
        try
        {
            using var doc = JsonDocument.Parse(File.ReadAllBytes(index));
            if (doc.RootElement.ValueKind != JsonValueKind.Object || !doc.RootElement.TryGetProperty("weight_map", out var wm) || wm.ValueKind != JsonValueKind.Object)
                throw new PeftFormatException(index, "missing object field 'weight_map'");
            map = wm.EnumerateObject().ToDictionary(p => p.Name, p => p.Value.ValueKind == JsonValueKind.String
                ? p.Value.GetString()!
                : throw new PeftFormatException(index, $"weight_map['{p.Name}'] must be a file name"));
        }
        catch (JsonException e) { throw new PeftFormatException(index, $"not valid JSON ({e.Message})"); }

        foreach (var group in map.GroupBy(kv => kv.Value))
        {
            var shard = Path.Combine(Directory, group.Key);
            if (Path.GetFileName(group.Key) != group.Key)
                throw new PeftFormatException(index, $"shard name '{group.Key}' must be a file in the same folder");
            if (!File.Exists(shard)) throw new PeftFormatException(index, $"shard '{group.Key}' listed in weight_map does not exist");
            var f = SafetensorsFile.Open(shard);
            var wanted = group.Select(kv => kv.Key).ToHashSet();
            var missing = wanted.Where(k => !f.Contains(k)).ToList();
            if (missing.Count > 0)
            {
                f.Dispose();
                throw new PeftFormatException(shard, $"weight_map says it holds {string.Join(", ", missing.Take(5))} but it does not");
            }
            Add(f, wanted);
        }
    }

    public SafetensorsEntry Entry(string name) => FileOf(name).Entry(name);

    public Tensor Load(string name, Device? device = null, ScalarType? dtype = null) => FileOf(name).Load(name, device, dtype);

    SafetensorsFile FileOf(string name) =>
        _byTensor.TryGetValue(name, out var f) ? f : throw new PeftFormatException(Directory, $"checkpoint has no tensor '{name}'");

    public void Dispose()
    {
        foreach (var f in _files) f.Dispose();
        _files.Clear();
    }
}
