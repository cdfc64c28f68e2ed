namespace PeftSharp;

/// <summary>Base of every error PeftSharp raises on purpose: the message says what was wrong and what was expected.</summary>
public class PeftSharpException : Exception
{
    public PeftSharpException(string message) : base(OneLine(message)) { }
    public PeftSharpException(string message, Exception inner) : base(OneLine(message), inner) { }

    /// <summary>
    /// The CLI prints an error as one line, so line breaks a message quotes from the input (a YAML block scalar, a
    /// template) are shown escaped as \n instead of splitting it (the fuzzer found such values in several messages).
    /// </summary>
    static string OneLine(string message) => message.ReplaceLineEndings("\\n");
}

/// <summary>A file (checkpoint, adapter, config, dataset) is missing, malformed or inconsistent.</summary>
public class PeftFormatException : PeftSharpException
{
    public string? FilePath { get; }

    /// <summary>The 1-based line (datasets, YAML, JSONL) the fault is on, when known.</summary>
    public long? Line { get; }

    public PeftFormatException(string? path, string message, Exception? inner = null)
        : base(path is null ? message : $"{path}: {message}", inner!) => FilePath = path;

    public PeftFormatException(string? path, long line, string message, Exception? inner = null)
        : base(path is null ? $"line {line}: {message}" : $"{path}:{line}: {message}", inner!)
    {
        FilePath = path;
        Line = line;
    }
}

/// <summary>A configuration value (config.json, adapter_config.json, YAML, CLI option) is invalid.</summary>
public class PeftConfigException : PeftSharpException
{
    public PeftConfigException(string message) : base(message) { }
    public PeftConfigException(string message, Exception inner) : base(message, inner) { }
}

/// <summary>The machine lacks something TorchSharp's native library needs.</summary>
public class PeftPlatformException : PeftSharpException
{
    public PeftPlatformException(string message) : base(message) { }
}

/// <summary>
/// Input asked for more work than a resource limit allows (template output, loop iterations, nesting depth,
/// regex time, prompt size, YAML aliases). The message names the limit and the environment variable that raises it.
/// </summary>
public class PeftLimitException : PeftSharpException
{
    public string Limit { get; }

    public PeftLimitException(string what, Runtime.ResourceLimit limit)
        : base($"{what} exceeds the limit of {limit.Value} {limit.Unit} ({limit.Description}; raise it with {limit.EnvVar}=N)") => Limit = limit.EnvVar;
}

/// <summary>An output folder cannot be used as asked (another run's checkpoints, a checkpoint of a different run).</summary>
public class PeftOutputException : PeftSharpException
{
    public PeftOutputException(string message) : base(message) { }
}
