using static TorchSharp.torch;

namespace PeftSharp.Runtime;

/// <summary>
/// What <c>bf16: true</c> computes in on this CPU. Frozen weights are always stored in bfloat16 (half the memory); the
/// arithmetic runs in bfloat16 only where the CPU multiplies bf16 natively (AVX512_BF16, AMX, Arm BF16). Elsewhere
/// libtorch's bf16 matmuls fall back to slow paths — a LoRA train step took 66.6 s against 1.3 s in fp32 on a Zen 3 —
/// so the weights are widened to float32 for each matmul instead. <c>PEFTSHARP_BF16_COMPUTE</c> = auto (default),
/// bf16 or fp32 overrides the choice.
/// </summary>
public static class Bf16Policy
{
    public const string ComputeVariable = "PEFTSHARP_BF16_COMPUTE";

    /// <summary>The dtype bf16 mode computes in here (BFloat16 or Float32).</summary>
    public static ScalarType ComputeDtype => Decide(CpuCapabilities.Current, Environment.GetEnvironmentVariable(ComputeVariable)).Dtype;

    /// <summary>The one line a run in bf16 mode prints about its precision.</summary>
    public static string Describe() => Decide(CpuCapabilities.Current, Environment.GetEnvironmentVariable(ComputeVariable)).Line;

    /// <summary>The decision for <paramref name="cpu"/> and a <c>PEFTSHARP_BF16_COMPUTE</c> value (null: auto).</summary>
    public static (ScalarType Dtype, string Line) Decide(CpuCapabilities cpu, string? setting)
    {
        var s = string.IsNullOrWhiteSpace(setting) ? "auto" : setting.Trim().ToLowerInvariant();
        var cpuName = $"{cpu.Model}, {cpu.ClassName}";
        return s switch
        {
            "bf16" or "bfloat16" => (ScalarType.BFloat16, $"bf16: weights stored and computed in bfloat16 ({ComputeVariable}={setting}; this CPU: {cpuName})"),
            "fp32" or "float32" => (ScalarType.Float32, $"bf16: frozen weights stored in bfloat16, computed in float32 ({ComputeVariable}={setting})"),
            "auto" when cpu.NativeBf16 => (ScalarType.BFloat16, $"bf16: weights stored and computed in bfloat16 (this CPU has native bf16: {cpuName})"),
            "auto" => (ScalarType.Float32, $"bf16: frozen weights stored in bfloat16, computed in float32 — this CPU ({cpuName}) has no native bf16 arithmetic, where bf16 matmuls are 10-50x slower ({ComputeVariable}=bf16 forces bf16)"),
            _ => throw new PeftConfigException($"{ComputeVariable}={setting}: expected auto, bf16 or fp32"),
        };
    }
}
