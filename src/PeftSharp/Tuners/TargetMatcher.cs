using System.Text.RegularExpressions;
using PeftSharp.Models;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;
using static TorchSharp.torch.nn;

namespace PeftSharp.Tuners;

/// <summary>What a config says about which modules to adapt (peft's target_modules and friends).</summary>
public sealed record TargetSpec
{
    public required StringOrList Targets { get; init; }
    public StringOrList? Exclude { get; init; }
    public IReadOnlyList<string>? ModulesToSave { get; init; }
    public int[]? LayersToTransform { get; init; }
    public StringOrList? LayersPattern { get; init; }
}

/// <summary>
/// peft's module matching (check_target_module_exists, peft-spec §1.2–1.4). Names are module paths relative to the
/// user model, as <c>named_modules()</c> gives them ("model.layers.3.self_attn.q_proj").
/// </summary>
public static class TargetMatcher
{
    /// <summary>The "target all linear layers" shorthand (case-insensitive).</summary>
    public const string AllLinear = "all-linear";

    /// <summary>Default target_modules per model_type when a config gives none (LoRA-family table of peft).</summary>
    public static readonly IReadOnlyDictionary<string, string[]> DefaultTargets = new Dictionary<string, string[]>
    {
        ["llama"] = new[] { "q_proj", "v_proj" },
        ["mistral"] = new[] { "q_proj", "v_proj" },
        ["qwen2"] = new[] { "q_proj", "v_proj" },
        ["qwen3"] = new[] { "q_proj", "v_proj" },
        ["gpt2"] = new[] { "c_attn" },
        ["bert"] = new[] { "query", "value" },
        ["roberta"] = new[] { "query", "value" },
    };

    static readonly string[] SeqClsHeads = { "score", "classifier" };

    static readonly Dictionary<string, Regex> Cache = new();

    static Regex Rx(string pattern)
    {
        lock (Cache)
        {
            if (!Cache.TryGetValue(pattern, out var r))
            {
                try { r = new Regex(pattern, RegexOptions.CultureInvariant); }
                catch (ArgumentException e) { throw new PeftConfigException($"'{pattern}' is not a valid regular expression ({e.Message})"); }
                Cache[pattern] = r;
            }
            return r;
        }
    }

    /// <summary>Python's re.fullmatch.</summary>
    public static bool FullMatch(string pattern, string key) => Rx($"^(?:{pattern})\\z").IsMatch(key);

    /// <summary>A list entry matches a name exactly or as a '.'-suffix.</summary>
    public static bool ListMatch(IEnumerable<string> items, string key) => items.Any(t => key == t || key.EndsWith("." + t, StringComparison.Ordinal));

    public static bool IsExcluded(StringOrList? exclude, string key) =>
        exclude is not null && (exclude.IsString ? FullMatch(exclude.Pattern!, key) : ListMatch(exclude.Items!, key));

    /// <summary>A module, or a sub-module of one, listed in modules_to_save is never a target.</summary>
    public static bool IsModulesToSave(IReadOnlyList<string>? modulesToSave, string key) =>
        modulesToSave is { Count: > 0 } && modulesToSave.Any(m => Rx($"^(?:^|.*\\.){m}(?:$|\\..*)").IsMatch(key));

    /// <summary>check_target_module_exists: exclusion, modules_to_save guard, target match, layer filter.</summary>
    public static bool Matches(TargetSpec spec, string key)
    {
        if (IsExcluded(spec.Exclude, key) || IsModulesToSave(spec.ModulesToSave, key)) return false;
        var t = spec.Targets;
        if (t.IsString) return FullMatch(t.Pattern!, key);
        if (t.Items!.Contains(key)) return true;
        if (!ListMatch(t.Items!, key)) return false;
        if (spec.LayersToTransform is not { Length: > 0 } layers) return true;
        int? index = LayerIndex(key, spec.LayersPattern);
        return index is int i && layers.Contains(i);
    }

    /// <summary>The layer index of a module name: the first numeric segment, or the one after a layers_pattern entry.</summary>
    public static int? LayerIndex(string key, StringOrList? layersPattern)
    {
        var patterns = layersPattern is null ? Array.Empty<string>()
            : layersPattern.IsString ? (layersPattern.Pattern!.Length == 0 ? Array.Empty<string>() : new[] { layersPattern.Pattern! })
            : layersPattern.Items!.ToArray();
        if (patterns.Length == 0)
        {
            var m = Rx(@"^.*?\.[^.]*\.(\d+)\.").Match(key);
            return m.Success ? int.Parse(m.Groups[1].Value) : null;
        }
        foreach (var p in patterns)
        {
            var m = Rx($"^.*?\\.{p}\\.(\\d+)\\.").Match(key);
            if (m.Success) return int.Parse(m.Groups[1].Value);
        }
        return null;
    }

    /// <summary>peft's get_pattern_key: the first pattern that matches a dot-aligned tail of the name, or null.</summary>
    public static string? PatternKey(IEnumerable<string> patterns, string key) =>
        patterns.FirstOrDefault(p => Rx($"^(?:.*\\.)?(?:{p})$").IsMatch(key));

    /// <summary>Modules of the model that tuners may consider: everything not inside an existing adapter wrapper.</summary>
    public static IEnumerable<(string Name, nn.Module Module)> Candidates(nn.Module model)
    {
        var wrappers = new List<string>();
        foreach (var (name, m) in model.named_modules())
        {
            if (name.Length == 0) continue;
            if (wrappers.Any(w => name.StartsWith(w + ".", StringComparison.Ordinal))) continue;
            if (m is IAdapterLayer) wrappers.Add(name);
            yield return (name, m);
        }
    }

    /// <summary>
    /// Refuses a target that another method's adapter layer already wraps: skipping it would leave the new adapter
    /// silently missing there, and two module-replacing methods do not stack on one module.
    /// </summary>
    public static void RefuseWrapped(string name, nn.Module module, string method)
    {
        if (module is AdapterLayer { Adapters.Count: > 0 } layer) throw new TargetOverlapException(name, layer.Adapters, method);
    }

    public static bool IsLinearLike(nn.Module m) =>
        m is TorchSharp.Modules.Linear or Conv1D or Quantization.Linear4bit || m is IAdapterLayer && m.GetType().Name.Contains("Linear", StringComparison.Ordinal);

    /// <summary>
    /// Expands "all-linear": every Linear/Conv1D (or linear adapter wrapper) except the output layer — the
    /// top-level lm_head, or for SEQ_CLS models without one, the first of score/classifier.
    /// </summary>
    public static List<string> ExpandAllLinear(nn.Module model, string? taskType)
    {
        var names = Candidates(model).Where(c => IsLinearLike(c.Module)).Select(c => c.Name).ToList();
        var top = model.named_children().Select(c => c.name).ToHashSet();
        string? head = top.Contains("lm_head") ? "lm_head" : taskType == "SEQ_CLS" ? SeqClsHeads.FirstOrDefault(top.Contains) : null;
        if (head is not null) names.Remove(head);
        return names;
    }

    /// <summary>
    /// The modules a spec selects among those <paramref name="supported"/> accepts. Throws, listing the candidate
    /// names, when nothing matches (peft: "Target modules ... not found in the base model").
    /// </summary>
    public static List<string> Resolve(nn.Module model, TargetSpec spec, Func<nn.Module, bool> supported, string method)
    {
        if (spec.Targets.IsString && (spec.LayersToTransform is not null || spec.LayersPattern is not null))
            throw new PeftConfigException($"{method}: layers_to_transform/layers_pattern cannot be combined with a regex target_modules ('{spec.Targets.Pattern}')");
        var candidates = Candidates(model).ToList();
        var found = candidates.Where(c => Matches(spec, c.Name)).ToList();
        foreach (var c in found.Where(c => !supported(c.Module))) RefuseWrapped(c.Name, c.Module, method);
        var unsupported = found.Where(c => !supported(c.Module)).ToList();
        var result = found.Where(c => supported(c.Module)).Select(c => c.Name).ToList();
        if (result.Count > 0) return result;

        var leafNames = candidates.Where(c => supported(c.Module)).Select(c => c.Name.Split('.')[^1]).Distinct().OrderBy(n => n, StringComparer.Ordinal);
        var why = unsupported.Count > 0
            ? $" ({string.Join(", ", unsupported.Take(5).Select(u => $"{u.Name} is a {u.Module.GetType().Name}"))}, which {method} cannot adapt)"
            : "";
        throw new PeftConfigException(
            $"{method}: target_modules {spec.Targets} matched no supported module in the model{why}; " +
            $"candidate module names: {string.Join(", ", leafNames)}");
    }
}

/// <summary>A target module already holds adapters of another module-replacing method (see <see cref="TargetMatcher.RefuseWrapped"/>).</summary>
public sealed class TargetOverlapException(string module, IReadOnlyList<string> existing, string method)
    : PeftConfigException($"{method}: module '{module}' already holds {Names(existing)} of another method; two methods that replace modules cannot adapt the same module (choose target_modules that avoid it)")
{
    public string Module { get; } = module;
    public IReadOnlyList<string> Existing { get; } = existing.ToList();
    public string Method { get; } = method;

    static string Names(IReadOnlyList<string> a) => (a.Count == 1 ? "adapter " : "adapters ") + string.Join(", ", a.Select(n => $"'{n}'"));

    /// <summary>The same refusal naming the adapter being added.</summary>
    public PeftConfigException For(string adapter, string peftType) =>
        new($"adapter '{adapter}' ({peftType}) cannot adapt module '{Module}': it already holds {Names(Existing)} of another method, and two methods that replace modules cannot adapt the same module (choose target_modules that avoid it)");
}
