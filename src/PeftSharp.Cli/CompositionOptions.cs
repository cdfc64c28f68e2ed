using System.CommandLine;
using PeftSharp.Tuners;
using PeftSharp.Tuners.AdapterHub;
using PeftSharp.Tuners.Bottleneck;

namespace PeftSharp.Cli;

/// <summary>
/// AdapterHub compositions from the command line: <c>--compose "Stack[a,Fuse[b,c]]"</c> (Stack, Fuse, Parallel, Average,
/// adapter names as loaded with --adapter NAME=DIR) and <c>--fusion DIR</c> (a saved AdapterFusion layer, repeatable).
/// </summary>
public static class CompositionOptions
{
    public static Option<string?> ComposeOption() => new("--compose")
    {
        Description = "AdapterHub composition of the loaded adapters, e.g. \"Fuse[a,b]\", \"Stack[a,b]\", \"Parallel[a,b]\", \"Average[a,b]\"",
    };

    public static Option<string[]> FusionOption() => new("--fusion") { Description = "AdapterFusion folder (adapter_fusion_config.json) over loaded adapters; repeatable" };

    /// <summary>Loads the fusion layers and activates the composition; nothing when neither option is given.</summary>
    public static void Apply(PeftModel? peft, string? compose, string[]? fusions)
    {
        if (compose is null && fusions is not { Length: > 0 }) return;
        if (peft is null) throw new ArgumentException("--compose and --fusion need adapters (--adapter NAME=DIR)");
        foreach (var dir in fusions ?? Array.Empty<string>()) HubAdapters.LoadFusion(peft, dir);
        if (compose is null) throw new ArgumentException("--fusion needs --compose \"Fuse[a,b]\" to say where the fusion runs");
        HubAdapters.Activate(peft, Parse(compose));
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

    static void Skip(string s, ref int at) { while (at < s.Length && char.IsWhiteSpace(s[at])) at++; }

    static ArgumentException Error(string s, int at, string what) => new($"--compose \"{s}\": {what} at character {at + 1}");
}
