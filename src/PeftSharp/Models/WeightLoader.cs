using PeftSharp.IO;
using TorchSharp;
using static TorchSharp.torch;

namespace PeftSharp.Models;

/// <summary>Fills a model from a checkpoint by name: every parameter and buffer key must be found with the same shape.</summary>
public static class WeightLoader
{
    public static void Load(PreTrainedModel model, Checkpoint checkpoint, IEnumerable<string>? ignoreUnexpected = null)
    {
        var targets = model.state_dict();
        var missing = new List<string>();
        var mismatched = new List<string>();
        using (no_grad())
        {
            foreach (var (name, target) in targets)
            {
                if (!checkpoint.Contains(name))
                {
                    if (!model.TiedKeys.Contains(name)) missing.Add(name);
                    continue;
                }
                var entry = checkpoint.Entry(name);
                if (!entry.Shape.SequenceEqual(target.shape))
                {
                    mismatched.Add($"{name}: checkpoint [{string.Join(", ", entry.Shape)}], model [{string.Join(", ", target.shape)}]");
                    continue;
                }
                using var src = checkpoint.Load(name);
                target.copy_(src);
            }
        }
        var ignored = new HashSet<string>(ignoreUnexpected ?? Array.Empty<string>());
        var unexpected = checkpoint.Keys.Where(k => !targets.ContainsKey(k) && !ignored.Contains(k) && !IsAlwaysIgnored(k)).OrderBy(k => k).ToList();
        if (missing.Count + mismatched.Count + unexpected.Count == 0) return;

        var parts = new List<string>();
        if (missing.Count > 0) parts.Add($"missing keys: {string.Join(", ", missing)}");
        if (unexpected.Count > 0) parts.Add($"unexpected keys: {string.Join(", ", unexpected)}");
        if (mismatched.Count > 0) parts.Add($"shape mismatches: {string.Join("; ", mismatched)}");
        throw new PeftFormatException(checkpoint.Directory, $"checkpoint does not fit {model.GetType().Name}: {string.Join(" | ", parts)}");
    }

    // Non-persistent buffers some transformers versions saved (rotary tables, causal masks, position ids).
    static bool IsAlwaysIgnored(string key) =>
        key.EndsWith(".rotary_emb.inv_freq", StringComparison.Ordinal) || key.EndsWith(".attn.masked_bias", StringComparison.Ordinal) ||
        key.EndsWith(".attn.bias", StringComparison.Ordinal) && key.Contains(".h.", StringComparison.Ordinal) ||
        key.EndsWith("embeddings.position_ids", StringComparison.Ordinal);
}
