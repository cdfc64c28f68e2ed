using PeftSharp.Runtime;

namespace PeftSharp.Bench;

/// <summary>Which machine a figure came from: CPU model and class, the flags that pick kernels, MKL's path, threads, load.</summary>
public sealed record BenchMachine(
    string Cpu, string CpuClass, bool Emulated, bool Avx2, bool Avx512, bool Avx512Bf16, bool AmxBf16, bool ArmBf16,
    string MklKernels, string Bf16Compute, int TorchThreads, int LogicalCores, string? LoadAverage, string FastPaths)
{
    public static BenchMachine Current()
    {
        var cpu = CpuCapabilities.Current;
        string? load = null;
        try { if (File.Exists("/proc/loadavg")) load = string.Join(" ", File.ReadAllText("/proc/loadavg").Split(' ').Take(3)); }
        catch (IOException) { }
        return new BenchMachine(cpu.Model, cpu.ClassName, cpu.Forced, cpu.Avx2, cpu.Avx512, cpu.Avx512Bf16, cpu.AmxBf16, cpu.ArmBf16,
            MklAmdDispatch.Status, Bf16Policy.ComputeDtype == TorchSharp.torch.ScalarType.BFloat16 ? "bfloat16" : "float32",
            TorchSharp.torch.get_num_threads(), Environment.ProcessorCount, load, PeftSharp.Runtime.FastPaths.Describe());
    }

    [System.Text.Json.Serialization.JsonIgnore]
    public string FooterLine =>
        $"Machine: {CpuCapabilities.Current.Describe()}; MKL kernels: {MklKernels}; bf16 computes in {Bf16Compute}; " +
        $"{TorchThreads} torch threads of {LogicalCores} logical cores; fast paths (PEFTSHARP_FAST*) {FastPaths}" + (LoadAverage is null ? "." : $"; load average at the end {LoadAverage}.");
}
