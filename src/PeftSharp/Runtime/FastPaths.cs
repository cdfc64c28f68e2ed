namespace PeftSharp.Runtime;

/// <summary>
/// Switches for the step-time optimizations of issue 18, each on by default. They exist so a benchmark can compare
/// both paths on one build: <c>PEFTSHARP_FAST=0</c> turns all of them off, <c>PEFTSHARP_FAST_&lt;NAME&gt;=0</c> one
/// (names below). Read once per process.
/// </summary>
public static class FastPaths
{
    /// <summary>Rotary embedding in 3 passes over q/k instead of 5 (<c>ROPE</c>; <c>Models/Llama.cs</c> Rope.Apply).</summary>
    public static bool Rope { get; } = On("ROPE");

    /// <summary>AdamW's update in one SIMD pass per float32 CPU parameter (<c>ADAMW</c>; <c>Training/AdamWKernel.cs</c>).</summary>
    public static bool AdamW { get; } = On("ADAMW");

    static readonly (string Name, Func<bool> IsOn)[] All = { ("ROPE", () => Rope), ("ADAMW", () => AdamW) };

    static bool On(string name) =>
        Environment.GetEnvironmentVariable("PEFTSHARP_FAST") != "0" && Environment.GetEnvironmentVariable("PEFTSHARP_FAST_" + name) != "0";

    /// <summary>One line for benchmark footers: which switches are off.</summary>
    public static string Describe() =>
        All.All(s => s.IsOn()) ? "all on" : "off: " + string.Join(", ", All.Where(s => !s.IsOn()).Select(s => s.Name));
}
