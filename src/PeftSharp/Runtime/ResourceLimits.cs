namespace PeftSharp.Runtime;

/// <summary>
/// One bound on work an input file can make PeftSharp do. The value comes from its environment variable when set
/// (a positive integer), else the default; <see cref="Override"/> changes it for the current async flow (tests, hosts).
/// </summary>
public sealed class ResourceLimit
{
    readonly AsyncLocal<long?> _override = new();
    readonly Lazy<long> _fromEnvironment;

    public string EnvVar { get; }
    public long Default { get; }
    public string Unit { get; }
    public string Description { get; }

    internal ResourceLimit(string envVar, long @default, string unit, string description)
    {
        EnvVar = envVar; Default = @default; Unit = unit; Description = description;
        _fromEnvironment = new(() => Parse(Environment.GetEnvironmentVariable(envVar)));
    }

    public long Value => _override.Value ?? _fromEnvironment.Value;

    long Parse(string? text)
    {
        if (string.IsNullOrWhiteSpace(text)) return Default;
        if (long.TryParse(text, out var v) && v > 0) return v;
        throw new PeftConfigException($"environment variable {EnvVar}='{text}' must be a positive integer ({Description}, default {Default})");
    }

    /// <summary>Sets the limit until the returned scope is disposed, for this async flow only.</summary>
    public IDisposable Override(long value)
    {
        if (value <= 0) throw new ArgumentOutOfRangeException(nameof(value), $"{EnvVar} must be positive");
        var previous = _override.Value;
        _override.Value = value;
        return new Restore(() => _override.Value = previous);
    }

    /// <summary>Throws <see cref="PeftLimitException"/> naming <paramref name="what"/> when <paramref name="amount"/> exceeds the limit.</summary>
    public void Check(long amount, string what)
    {
        if (amount > Value) throw new PeftLimitException(what, this);
    }

    sealed class Restore(Action undo) : IDisposable
    {
        public void Dispose() => undo();
    }
}

/// <summary>Every limit on what a file can make PeftSharp compute, with its default and the variable that raises it.</summary>
public static class ResourceLimits
{
    public static readonly ResourceLimit JinjaMaxOutput = new("PEFTSHARP_JINJA_MAX_OUTPUT", 4_000_000, "characters",
        "largest string a chat template may build or render");
    public static readonly ResourceLimit JinjaMaxIterations = new("PEFTSHARP_JINJA_MAX_ITERATIONS", 1_000_000, "iterations",
        "loop iterations (and range() items) of one template render");
    public static readonly ResourceLimit JinjaMaxDepth = new("PEFTSHARP_JINJA_MAX_DEPTH", 200, "levels",
        "nesting of a chat template's expressions, blocks and macro calls");
    public static readonly ResourceLimit JinjaTimeoutMs = new("PEFTSHARP_JINJA_TIMEOUT_MS", 10_000, "ms",
        "wall-clock time of one template render");
    public static readonly ResourceLimit RegexTimeoutMs = new("PEFTSHARP_REGEX_TIMEOUT_MS", 2_000, "ms",
        "time one tokenizer regex may spend on one match");
    public static readonly ResourceLimit MaxPromptBytes = new("PEFTSHARP_MAX_PROMPT_BYTES", 1L << 20, "bytes",
        "largest text tokenized at once");
    public static readonly ResourceLimit YamlMaxNodes = new("PEFTSHARP_YAML_MAX_NODES", 100_000, "nodes",
        "values in one YAML file, counted with every alias (*name) expanded");
    public static readonly ResourceLimit YamlMaxDepth = new("PEFTSHARP_YAML_MAX_DEPTH", 64, "levels",
        "nesting of YAML mappings and sequences");
    public static readonly ResourceLimit MaxAdapterBytes = new("PEFTSHARP_MAX_ADAPTER_BYTES", 16L << 30, "bytes",
        "float32 parameters of one adapter, computed from its adapter_config.json and the model before allocating");

    public static IReadOnlyList<ResourceLimit> All { get; } =
        [JinjaMaxOutput, JinjaMaxIterations, JinjaMaxDepth, JinjaTimeoutMs, RegexTimeoutMs, MaxPromptBytes, YamlMaxNodes, YamlMaxDepth, MaxAdapterBytes];
}
