using System.Text.Json.Nodes;
using PeftSharp.IO;
using static TorchSharp.torch;

namespace PeftSharp.Tests.Models;

/// <summary>A temporary copy of a fixture model folder with its tensors (and optionally config) changed; deleted on dispose.</summary>
public sealed class ModifiedModelFolder : IDisposable
{
    public string Dir { get; } = TestPaths.TempDir();

    public ModifiedModelFolder(string source, Func<IEnumerable<KeyValuePair<string, Tensor>>, IEnumerable<KeyValuePair<string, Tensor>>> tensors, Action<JsonObject>? config = null)
    {
        var raw = (JsonObject)JsonNode.Parse(File.ReadAllText(Path.Combine(source, "config.json")))!;
        config?.Invoke(raw);
        File.WriteAllText(Path.Combine(Dir, "config.json"), raw.ToJsonString());
        using var scope = NewDisposeScope();
        using var f = SafetensorsFile.Open(Path.Combine(source, "model.safetensors"));
        SafetensorsWriter.Save(Path.Combine(Dir, "model.safetensors"), tensors(f.LoadAll()));
    }

    /// <summary>Renames the keys that start with <paramref name="prefix"/> to drop it, and leaves out the others.</summary>
    public static IEnumerable<KeyValuePair<string, Tensor>> StripPrefix(IEnumerable<KeyValuePair<string, Tensor>> tensors, string prefix) =>
        tensors.Where(kv => kv.Key.StartsWith(prefix, StringComparison.Ordinal)).Select(kv => new KeyValuePair<string, Tensor>(kv.Key[prefix.Length..], kv.Value));

    public void Dispose() => Directory.Delete(Dir, recursive: true);
}
