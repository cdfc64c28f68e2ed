namespace PeftSharp.Tuners.Bottleneck;

/// <summary>
/// AdapterHub's composition blocks for the bottleneck slots: a single adapter, <see cref="Stack"/> (one after the
/// other, each with its own pre-residual), <see cref="Fuse"/> (AdapterFusion over the children's outputs),
/// <see cref="Parallel"/> (the batch replicated once per child, copy i through child i, outputs stacked along the
/// batch) and <see cref="Average"/> (weighted mean of the children's outputs). AdapterHub defines no gate block:
/// gating is UniPELT's per-adapter <c>use_gating</c>.
/// </summary>
public sealed record Composition
{
    public enum Kind { Single, Stack, Fuse, Parallel, Average }

    public Kind Type { get; private init; }
    public string? Name { get; private init; }
    public IReadOnlyList<Composition> Children { get; private init; } = Array.Empty<Composition>();
    /// <summary>Average's weights, one per child (normalized to sum 1 unless asked otherwise); empty for other kinds.</summary>
    public IReadOnlyList<double> Weights { get; private init; } = Array.Empty<double>();

    public static Composition Single(string name) => new() { Type = Kind.Single, Name = name };
    public static Composition Stack(params Composition[] children) => new() { Type = Kind.Stack, Children = Check(Kind.Stack, children) };
    public static Composition Stack(params string[] names) => Stack(names.Select(Single).ToArray());
    public static Composition Fuse(params string[] names) => new() { Type = Kind.Fuse, Children = names.Select(Single).ToArray() };
    public static Composition Parallel(params Composition[] children) => new() { Type = Kind.Parallel, Children = Check(Kind.Parallel, children) };
    public static Composition Parallel(params string[] names) => Parallel(names.Select(Single).ToArray());

    /// <summary>AdapterHub's Average: <paramref name="weights"/> default to 1/N each; normalized to sum 1 unless <paramref name="normalizeWeights"/> is false.</summary>
    public static Composition Average(IReadOnlyList<Composition> children, IReadOnlyList<double>? weights = null, bool normalizeWeights = true)
    {
        if (weights is not null && weights.Count != children.Count)
            throw new PeftSharpException($"Average: {weights.Count} weights for {children.Count} adapters");
        double sum = weights?.Sum() ?? 0;
        var w = weights is null ? children.Select(_ => 1.0 / children.Count).ToArray()
            : normalizeWeights ? weights.Select(x => sum == 0 ? x : x / sum).ToArray() : weights.ToArray();
        return new() { Type = Kind.Average, Children = Check(Kind.Average, children.ToArray()), Weights = w };
    }

    public static Composition Average(params string[] names) => Average(names.Select(Single).ToArray());

    public static implicit operator Composition(string name) => Single(name);

    // AdapterHub's ALLOWED_NESTINGS for the blocks PeftSharp has (a block below the second level must be a Stack or a name).
    static Composition[] Check(Kind parent, Composition[] children)
    {
        if (children.Length == 0) throw new PeftSharpException($"{parent} needs at least one adapter");
        foreach (var c in children)
        {
            bool ok = c.Type == Kind.Single || parent switch
            {
                Kind.Stack => c.Type is Kind.Fuse or Kind.Parallel or Kind.Average,
                Kind.Parallel or Kind.Average => c.Type == Kind.Stack,
                _ => false,
            };
            if (!ok) throw new PeftSharpException($"cannot nest {c.Type} inside {parent} (AdapterHub allows: Stack of names, Fuse, Parallel, Average; Parallel/Average of names or Stacks)");
            if (c.Children.Any(g => g.Type is not (Kind.Single or Kind.Stack)))
                throw new PeftSharpException($"{c} is too deep: below the second level only names and Stacks may appear");
        }
        return children;
    }

    /// <summary>AdapterHub's Fuse name: the children joined by ",".</summary>
    public string FusionName => string.Join(",", Children.Select(c => c.Name ?? c.ToString()));

    /// <summary>Every adapter name, depth first.</summary>
    public IEnumerable<string> Flatten() => Type == Kind.Single ? new[] { Name! } : Children.SelectMany(c => c.Flatten());

    /// <summary>The first adapter (AdapterHub's first()).</summary>
    public string First => Type == Kind.Single ? Name! : Children[0].First;

    /// <summary>The last adapter (AdapterHub's last()).</summary>
    public string Last => Type == Kind.Single ? Name! : Children[^1].Last;

    /// <summary>Copies of the batch this setup runs (AdapterHub's parallel_channels): a Parallel's child count, else 1.</summary>
    public int ParallelChannels => Type == Kind.Parallel ? Children.Count : Children.Select(c => c.ParallelChannels).DefaultIfEmpty(1).Max();

    public override string ToString() => Type switch
    {
        Kind.Single => Name!,
        Kind.Average => $"Average[{string.Join(", ", Children.Zip(Weights, (c, w) => $"{c}:{w:0.###}"))}]",
        _ => $"{Type}[{string.Join(", ", Children)}]",
    };
}
