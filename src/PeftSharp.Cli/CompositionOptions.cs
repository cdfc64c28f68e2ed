using System.CommandLine;

namespace PeftSharp.Cli;

/// <summary>
/// The <c>--compose "Stack[a,Fuse[b,c]]"</c> and <c>--fusion DIR</c> options; their text goes to
/// <see cref="Tuners.AdapterComposition"/>, which parses and applies it.
/// </summary>
public static class CompositionOptions
{
    public static Option<string?> ComposeOption() => new("--compose")
    {
        Description = "AdapterHub composition of the loaded adapters, e.g. \"Fuse[a,b]\", \"Stack[a,b]\", \"Parallel[a,b]\", \"Average[a,b]\"",
    };

    public static Option<string[]> FusionOption() => new("--fusion") { Description = "AdapterFusion folder (adapter_fusion_config.json) over loaded adapters; repeatable" };
}
