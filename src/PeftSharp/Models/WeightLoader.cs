using PeftSharp.IO;
using TorchSharp;
using static TorchSharp.torch;

namespace PeftSharp.Models;

/// <summary>Fills a model from a checkpoint by name: every parameter and buffer key must be found with the same shape.</summary>
public static class WeightLoader
{
    /// <param name="newHead">The caller asked for a head the checkpoint may not have (a task_type on a base folder): its
    /// missing weights keep their fresh initialization with a warning, as transformers does. Otherwise they are an error.</param>
    public static void Load(PreTrainedModel model, Checkpoint checkpoint, IEnumerable<string>? ignoreUnexpected = null, bool newHead = false)
    {
        var targets = model.state_dict();
        var (keyOf, baseFromTask) = CheckpointKeyMap(model.BaseModelPrefix, targets.Keys, checkpoint.Keys);
        var missing = new List<string>();
        var fresh = new List<string>();
        var mismatched = new List<string>();
        using (no_grad())
        using (var progress = Runtime.PeftProgress.Begin($"loading {Path.GetFileName(checkpoint.Directory.TrimEnd('/', '\\'))}", targets.Count, "tensors"))
        {
            long done = 0, bytes = 0;
            foreach (var (name, target) in targets)
            {
                progress.Report(done++, $"{bytes / 1048576.0:F1} MB");
                var key = keyOf(name);
                if (!checkpoint.Contains(key))
                {
                    if (newHead && model.IsTaskHeadKey(name)) fresh.Add(name);
                    else if (!model.TiedKeys.Contains(name)) missing.Add(key);
                    continue;
                }
                var entry = checkpoint.Entry(key);
                if (!entry.Shape.SequenceEqual(target.shape))
                {
                    mismatched.Add($"{key}: checkpoint [{string.Join(", ", entry.Shape)}], model [{string.Join(", ", target.shape)}]");
                    continue;
                }
                // Integer data cast into float weights (or back) is never a real checkpoint: refuse rather than convert.
                if (IsFloat(target.dtype) != IsFloat(entry.ScalarType))
                {
                    mismatched.Add($"{key}: checkpoint dtype {entry.DType}, model {target.dtype} (integer and floating-point data do not mix)");
                    continue;
                }
                using var src = checkpoint.Load(key);
                target.copy_(src);
                bytes += src.NumberOfElements * src.ElementSize;
            }
            progress.Report(done, $"{bytes / 1048576.0:F1} MB");
        }
        var expected = targets.Keys.Select(keyOf).ToHashSet();
        var ignored = new HashSet<string>(ignoreUnexpected ?? Array.Empty<string>());
        var unexpected = checkpoint.Keys.Where(k => !expected.Contains(k) && !ignored.Contains(k) && !IsAlwaysIgnored(k)).ToList();
        // A base model read from a task checkpoint leaves the task head's weights, as transformers does.
        if (baseFromTask is { } prefix) unexpected.RemoveAll(k => !k.StartsWith(prefix, StringComparison.Ordinal));
        if (fresh.Count > 0)
        {
            // A checkpoint of another head (BertModel, BertForMaskedLM) under a new one: transformers initializes the
            // new head's weights and leaves the other head's, warning about both.
            fresh.Sort(StringComparer.Ordinal);
            AutoModel.Warn($"{checkpoint.Directory}: {model.GetType().Name} weights not in the checkpoint, newly initialized: {string.Join(", ", fresh)}");
            var otherHead = model.BaseModelPrefix is { } bp ? unexpected.Where(k => !k.StartsWith(bp + ".", StringComparison.Ordinal)).ToList() : [];
            if (otherHead.Count > 0)
            {
                otherHead.Sort(StringComparer.Ordinal);
                AutoModel.Warn($"{checkpoint.Directory}: weights of another head not used by {model.GetType().Name}: {string.Join(", ", otherHead)}");
                unexpected.RemoveAll(otherHead.Contains);
            }
        }
        unexpected.Sort(StringComparer.Ordinal);
        if (missing.Count + mismatched.Count + unexpected.Count == 0) return;

        var parts = new List<string>();
        if (missing.Count > 0) parts.Add($"missing keys: {string.Join(", ", missing)}");
        if (unexpected.Count > 0) parts.Add($"unexpected keys: {string.Join(", ", unexpected)}");
        if (mismatched.Count > 0) parts.Add($"shape/dtype mismatches: {string.Join("; ", mismatched)}");
        throw new PeftFormatException(checkpoint.Directory, $"checkpoint does not fit {model.GetType().Name}: {string.Join(" | ", parts)}");
    }

    /// <summary>
    /// Model key → checkpoint key, with transformers' base-model-prefix rule: a task model (keys under
    /// "prefix.") reads a bare base checkpoint by dropping the prefix; a bare base model reads a task checkpoint
    /// by adding it (then BaseFromTask is that "prefix.").
    /// </summary>
    static (Func<string, string> ToCheckpoint, string? BaseFromTask) CheckpointKeyMap(string? basePrefix, IEnumerable<string> modelKeys, IEnumerable<string> checkpointKeys)
    {
        if (basePrefix is null) return (k => k, null);
        var prefix = basePrefix + ".";
        bool modelHas = modelKeys.Any(k => k.StartsWith(prefix, StringComparison.Ordinal));
        bool checkpointHas = checkpointKeys.Any(k => k.StartsWith(prefix, StringComparison.Ordinal));
        if (modelHas && !checkpointHas) return (k => k.StartsWith(prefix, StringComparison.Ordinal) ? k[prefix.Length..] : k, null);
        if (!modelHas && checkpointHas) return (k => prefix + k, prefix);
        return (k => k, null);
    }

    static bool IsFloat(ScalarType t) => t is ScalarType.Float32 or ScalarType.Float64 or ScalarType.Float16 or ScalarType.BFloat16;

    // Non-persistent buffers some transformers versions saved (rotary tables, causal masks, position ids).
    static bool IsAlwaysIgnored(string key) =>
        key.EndsWith(".rotary_emb.inv_freq", StringComparison.Ordinal) || key.EndsWith(".attn.masked_bias", StringComparison.Ordinal) ||
        key.EndsWith(".attn.bias", StringComparison.Ordinal) && (key.StartsWith("h.", StringComparison.Ordinal) || key.Contains(".h.", StringComparison.Ordinal)) ||
        key.EndsWith("embeddings.position_ids", StringComparison.Ordinal);
}
