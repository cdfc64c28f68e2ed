namespace PeftSharp;

/// <summary>Base of every error PeftSharp raises on purpose: the message says what was wrong and what was expected.</summary>
public class PeftSharpException : Exception
{
    public PeftSharpException(string message) : base(message) { }
    public PeftSharpException(string message, Exception inner) : base(message, inner) { }
}

/// <summary>A file (checkpoint, adapter, config, dataset) is missing, malformed or inconsistent.</summary>
public class PeftFormatException : PeftSharpException
{
    public string? FilePath { get; }
    public PeftFormatException(string? path, string message, Exception? inner = null)
        : base(path is null ? message : $"{path}: {message}", inner!) => FilePath = path;
}

/// <summary>A configuration value (config.json, adapter_config.json, YAML, CLI option) is invalid.</summary>
public class PeftConfigException : PeftSharpException
{
    public PeftConfigException(string message) : base(message) { }
}

/// <summary>The machine lacks something TorchSharp's native library needs.</summary>
public class PeftPlatformException : PeftSharpException
{
    public PeftPlatformException(string message) : base(message) { }
}
