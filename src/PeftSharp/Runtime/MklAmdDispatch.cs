using System.Runtime.InteropServices;
using System.Runtime.Intrinsics.X86;

namespace PeftSharp.Runtime;

/// <summary>
/// The MKL inside libtorch_cpu picks its kernels by CPU vendor first, so on AMD CPUs it runs AVX2 sgemm even where
/// the CPU has AVX-512. On two Zen 5 cores that is 166-177 GFLOP/s against 390-404 GFLOP/s with the AVX-512 kernels,
/// and a LoRA fp32 train step of 1.08 s against 0.59 s. Before libtorch loads, we put a one-function shim
/// (<c>Native/mkl_amd_avx512.c</c>) into the global symbol scope; it answers MKL's vendor test, so MKL dispatches
/// on the CPUID feature bits alone, in its reproducible mode for that branch (<c>MKL_CBWR=AVX512</c> unless set).
/// On AMD CPUs with AVX2 but no AVX-512 (Zen 1-3, or <c>PEFTSHARP_CPU_CLASS=avx2</c>) the same shim gives MKL's Intel
/// AVX2 kernels instead of its vendor default (<c>MKL_CBWR=AVX2</c>): the train-step's GEMMs, forward+backward, took
/// 10-20 % less CPU time on Zen 5 capped at AVX2 (docs/benchmarks.md).
/// Only on Linux x64, AMD, AVX2+FMA; <c>PEFTSHARP_MKL_AMD_AVX512=0</c> opts out (either branch).
/// </summary>
public static class MklAmdDispatch
{
    public const string OptOutVariable = "PEFTSHARP_MKL_AMD_AVX512";
    public const string ShimFileName = "libpeftsharp_mkl_amd.so";

    /// <summary>What MKL's <c>mkl_serv_cpu_detect</c> returns for its AVX-512 path (0 on Zen 5 without the shim).</summary>
    public const int MklAvx512Branch = 7;
    /// <summary>... and for its AVX2 path (0 on AMD without the shim).</summary>
    public const int MklAvx2Branch = 5;

    /// <summary>The branch MKL takes once <see cref="Enabled"/>: AVX-512 where the CPU class has it, else AVX2.</summary>
    public static int? ExpectedBranch { get; private set; }

    const int RTLD_LAZY = 1, RTLD_NOW = 2, RTLD_NOLOAD = 4, RTLD_GLOBAL = 0x100;

    [DllImport("libc", EntryPoint = "dlopen")] static extern nint DlOpen(string? file, int flags);
    [DllImport("libc", EntryPoint = "dlsym")] static extern nint DlSym(nint handle, string name);
    [DllImport("libc", EntryPoint = "dlerror")] static extern nint DlError();
    [DllImport("libc", EntryPoint = "setenv")] static extern int SetEnv(string name, string value, int overwrite);

    /// <summary>True once the shim is loaded, i.e. MKL will use AVX-512 on this AMD CPU.</summary>
    public static bool Enabled { get; private set; }

    /// <summary>One line for logs and benchmark footers.</summary>
    public static string Status { get; private set; } = "vendor default";

    /// <summary>Linux x64 on an AMD CPU with AVX2 and FMA (MKL's AVX2 kernels; AVX-512 ones where F/BW/DQ/VL are there too).</summary>
    public static bool CpuQualifies =>
        OperatingSystem.IsLinux() && RuntimeInformation.ProcessArchitecture == Architecture.X64 && IsAmd()
        && Avx2.IsSupported && Fma.IsSupported;

    static bool HasAvx512Subsets => Avx512F.IsSupported && Avx512BW.IsSupported && Avx512DQ.IsSupported && Avx512F.VL.IsSupported;

    /// <summary>The MKL branch the CPU class (real or emulated by <c>PEFTSHARP_CPU_CLASS</c>) allows, or null with why not.</summary>
    static int? BranchFor(out string? why)
    {
        why = null;
        try
        {
            var cpu = CpuCapabilities.Detected;
            if (cpu.Avx512 && HasAvx512Subsets) return MklAvx512Branch;
            if (cpu.Avx2) return MklAvx2Branch;
            why = $"{CpuCapabilities.ClassVariable}={cpu.ClassName}";
        }
        catch (PeftConfigException e) { why = e.Message; }
        return null;
    }

    static bool IsAmd()
    {
        if (!X86Base.IsSupported) return false;
        var (_, ebx, ecx, edx) = X86Base.CpuId(0, 0);
        Span<int> vendor = stackalloc int[] { ebx, edx, ecx };
        return System.Text.Encoding.ASCII.GetString(MemoryMarshal.AsBytes(vendor)) == "AuthenticAMD";
    }

    /// <summary>Runs when the PeftSharp assembly loads (<see cref="NativeSetup"/>), so normally before libtorch does; later is too late for MKL.</summary>
    internal static void Enable()
    {
        if (!CpuQualifies) return;
        if (Environment.GetEnvironmentVariable(OptOutVariable) == "0") { Status = $"vendor default ({OptOutVariable}=0)"; return; }
        if (BranchFor(out var why) is not { } branch) { Status = $"vendor default ({why})"; return; }
        try
        {
            var path = ShimCandidates().FirstOrDefault(File.Exists);
            if (path is null) { Status = $"vendor default ({ShimFileName} not found next to PeftSharp)"; return; }
            if (DlOpen(path, RTLD_NOW | RTLD_GLOBAL) == 0)
            {
                Status = $"vendor default (dlopen {path}: {Marshal.PtrToStringAnsi(DlError())})";
                return;
            }
            // MKL's reproducibility mode for this branch (same results run to run at a given thread count); no
            // measurable cost here. A user's own MKL_CBWR wins.
            bool avx512 = branch == MklAvx512Branch;
            SetEnv("MKL_CBWR", avx512 ? "AVX512" : "AVX2", 0);
            Enabled = true;
            ExpectedBranch = branch;
            Status = avx512 ? "AVX-512 on AMD" : "AVX2 on AMD (MKL's Intel AVX2 kernels)";
        }
        catch (Exception e) when (e is DllNotFoundException or EntryPointNotFoundException)
        {
            Status = $"vendor default ({e.Message})";
        }
    }

    static IEnumerable<string> ShimCandidates()
    {
        var dirs = new[] { AppContext.BaseDirectory, Path.GetDirectoryName(typeof(MklAmdDispatch).Assembly.Location) ?? "" };
        foreach (var dir in dirs.Where(d => d.Length > 0).Distinct())
        {
            yield return Path.Combine(dir, ShimFileName);
            yield return Path.Combine(dir, "runtimes", "linux-x64", "native", ShimFileName);
        }
    }

    /// <summary>
    /// The code path MKL chose (<c>mkl_serv_cpu_detect</c> of the loaded libtorch_cpu), or null where libtorch has no
    /// MKL or is not loaded yet. <see cref="MklAvx512Branch"/> means AVX-512.
    /// </summary>
    public static unsafe int? MklCpuBranch()
    {
        if (!OperatingSystem.IsLinux()) return null;
        var lib = DlOpen("libtorch_cpu.so", RTLD_LAZY | RTLD_NOLOAD);
        if (lib == 0) return null;
        var detect = DlSym(lib, "mkl_serv_cpu_detect");
        return detect == 0 ? null : ((delegate* unmanaged<int, int>)detect)(0);
    }
}
