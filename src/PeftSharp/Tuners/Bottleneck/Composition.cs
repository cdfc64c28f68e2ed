namespace PeftSharp.Tuners.Bottleneck;

/// <summary>
/// AdapterHub's composition blocks for the bottleneck slots: a single adapter, <see cref="Stack"/> (one after the
/// other, each with its own pre-residual) and <see cref="Fuse"/> (AdapterFusion over the children's outputs).
/// </summary>
public sealed record Composition
{
    public enum Kind { Single, Stack, Fuse }

    public Kind Type { get; private init; }
    public string? Name { get; private init; }
    public IReadOnlyList<Composition> Children { get; private init; } = Array.Empty<Composition>();

    public static Composition Single(string name) => new() { Type = Kind.Single, Name = name };
    public static Composition Stack(params Composition[] children) => new() { Type = Kind.Stack, Children = children };
    public static Composition Stack(params string[] names) => Stack(names.Select(Single).ToArray());
    public static Composition Fuse(params string[] names) => new() { Type = Kind.Fuse, Children = names.Select(Single).ToArray() };

    public static implicit operator Composition(string name) => Single(name);

    /// <summary>AdapterHub's Fuse name: the children joined by ",".</summary>
    public string FusionName => string.Join(",", Children.Select(c => c.Name ?? c.ToString()));

    /// <summary>Every adapter name, depth first.</summary>
    public IEnumerable<string> Flatten() => Type == Kind.Single ? new[] { Name! } : Children.SelectMany(c => c.Flatten());

    /// <summary>The last adapter (AdapterHub's last()).</summary>
    public string Last => Type == Kind.Single ? Name! : Children[^1].Last;

    public override string ToString() => Type switch
    {
        Kind.Single => Name!,
        _ => $"{Type}[{string.Join(", ", Children)}]",
    };
}
