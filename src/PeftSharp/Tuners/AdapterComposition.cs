using PeftSharp.Tuners.AdapterHub;
using PeftSharp.Tuners.Bottleneck;

namespace PeftSharp.Tuners;

/// <summary>
/// AdapterHub compositions given as text (the CLI's and the server's <c>--compose</c>): <c>"Stack[a,Fuse[b,c]]"</c> with
/// the blocks Stack, Fuse, Parallel, Average over loaded adapter names, plus saved AdapterFusion folders. Callers hand
/// over strings; the blocks stay data (<see cref="Composition"/>) inside the method that runs them.
/// </summary>
public static class AdapterComposition
{
    /// <summary>
    /// Loads the fusion layers in <paramref name="fusionDirs"/> (adapter_fusion_config.json folders) and activates
    /// <paramref name="compose"/>; nothing when neither is given.
    /// </summary>
    public static void Apply(PeftModel? peft, string? compose, IReadOnlyList<string>? fusionDirs)
    {
        if (compose is null && fusionDirs is not { Count: > 0 }) return;
        if (peft is null) throw new PeftConfigException("a composition (--compose, --fusion) needs loaded adapters (--adapter NAME=DIR)");
        LoadFusions(peft, fusionDirs ?? Array.Empty<string>());
        if (compose is null) throw new PeftConfigException("a fusion layer (--fusion) needs a composition such as \"Fuse[a,b]\" (--compose) to say where it runs");
        HubAdapters.Activate(peft, Parse(compose));
    }

    /// <summary>Loads saved AdapterFusion layers (adapter_fusion_config.json folders) over adapters loaded in <paramref name="peft"/>.</summary>
    public static void LoadFusions(PeftModel peft, IReadOnlyList<string> fusionDirs)
    {
        foreach (var dir in fusionDirs) HubAdapters.LoadFusion(peft, dir);
    }

    /// <summary>Parses NAME | KIND[child, child, ...] with KIND one of Stack, Fuse, Parallel, Average (case-insensitive).</summary>
    public static Composition Parse(string text)
    {
        int at = 0;
        var result = Node(text, ref at);
        Skip(text, ref at);
        if (at != text.Length) throw Error(text, at, "unexpected text after the composition");
        return result;
    }

    static Composition Node(string s, ref int at)
    {
        Skip(s, ref at);
        int start = at;
        while (at < s.Length && s[at] is not ('[' or ']' or ',') && !char.IsWhiteSpace(s[at])) at++;
        var word = s[start..at];
        if (word.Length == 0) throw Error(s, at, "expected an adapter name or Stack/Fuse/Parallel/Average[...]");
        Skip(s, ref at);
        if (at >= s.Length || s[at] != '[') return Composition.Single(word);
        at++;
        var children = new List<Composition>();
        while (true)
        {
            children.Add(Node(s, ref at));
            Skip(s, ref at);
            if (at < s.Length && s[at] == ',') { at++; continue; }
            if (at < s.Length && s[at] == ']') { at++; break; }
            throw Error(s, at, "expected ',' or ']'");
        }
        try
        {
            return word.ToLowerInvariant() switch
            {
                "stack" => Composition.Stack(children.ToArray()),
                "parallel" => Composition.Parallel(children.ToArray()),
                "average" => Composition.Average(children),
                "fuse" => children.All(c => c.Type == Composition.Kind.Single)
                    ? Composition.Fuse(children.Select(c => c.Name!).ToArray())
                    : throw Error(s, start, "Fuse takes adapter names only"),
                _ => throw Error(s, start, $"'{word}' is not a composition block (Stack, Fuse, Parallel, Average)"),
            };
        }
        catch (PeftSharpException e) when (e is not PeftConfigException)
        {
            // A nesting AdapterHub does not allow, said with the text it came from.
            throw Error(s, start, e.Message);
        }
    }

    static void Skip(string s, ref int at) { while (at < s.Length && char.IsWhiteSpace(s[at])) at++; }

    static PeftConfigException Error(string s, int at, string what) => new($"composition \"{s}\": {what} at character {at + 1}");
}
