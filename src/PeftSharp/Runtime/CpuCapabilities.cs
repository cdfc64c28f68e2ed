using System.Runtime.InteropServices;
using System.Runtime.Intrinsics.Arm;
using System.Runtime.Intrinsics.X86;

namespace PeftSharp.Runtime;

/// <summary>What kind of CPU the process runs on, as far as our kernel choices care (best first).</summary>
public enum CpuClass
{
    /// <summary>x86 with AMX tiles for bf16 (Sapphire Rapids and later).</summary>
    Amx,
    /// <summary>x86 with AVX-512 and native bf16 dot products (AVX512_BF16: Cooper Lake, Zen 4/5).</summary>
    Avx512Bf16,
    /// <summary>x86 with AVX-512 but no bf16 arithmetic (Skylake-SP, Cascade Lake, Ice Lake).</summary>
    Avx512,
    /// <summary>x86 with AVX2 only (Zen 1-3, Haswell to Comet Lake, most laptops).</summary>
    Avx2,
    /// <summary>Arm64 with the BF16 extension (Graviton 3+, Apple M2+, Neoverse V1/N2).</summary>
    Arm64Bf16,
    /// <summary>Arm64 without bf16 arithmetic.</summary>
    Arm64,
    /// <summary>Anything else (pre-AVX2 x86, other architectures).</summary>
    Other,
}

/// <summary>
/// The CPU's model name and the instruction-set features that decide our kernel choices, detected once at start-up
/// from <c>/proc/cpuinfo</c> (the kernel's view: it lists AMX only where the OS enables it) or, elsewhere, from
/// System.Runtime.Intrinsics and CPUID. <c>PEFTSHARP_CPU_CLASS</c> (amx, avx512_bf16, avx512, avx2, arm64_bf16,
/// arm64, other) forces a class no better than the detected one; a lower class also caps MKL, oneDNN and ATen at
/// that instruction set, so a Zen 5 machine can stand in for an AVX2-only one (an emulation: same cores and caches).
/// </summary>
public sealed record CpuCapabilities(
    string Model, Architecture Architecture, bool Avx2, bool Avx512, bool Avx512Bf16, bool AmxBf16, bool ArmBf16,
    CpuClass Class, bool Forced)
{
    public const string ClassVariable = "PEFTSHARP_CPU_CLASS";

    [DllImport("libc", EntryPoint = "setenv")] static extern int SetEnv(string name, string value, int overwrite);

    static CpuCapabilities? _detected;
    static CpuCapabilities? _override;

    /// <summary>The hardware as detected, with <c>PEFTSHARP_CPU_CLASS</c> applied.</summary>
    public static CpuCapabilities Detected => _detected ??= Detect(Environment.GetEnvironmentVariable(ClassVariable));

    /// <summary>What the rest of the library asks: <see cref="Detected"/>, unless a test has forced a class in-process.</summary>
    public static CpuCapabilities Current => _override ?? Detected;

    /// <summary>Whether the CPU multiplies bf16 natively; without it bf16 matmuls are 10-50× slower than fp32.</summary>
    public bool NativeBf16 => Class is CpuClass.Amx or CpuClass.Avx512Bf16 or CpuClass.Arm64Bf16;

    /// <summary>The class's name as <c>PEFTSHARP_CPU_CLASS</c> spells it.</summary>
    public string ClassName => Name(Class);

    /// <summary>One line for logs and benchmark footers: model, class, flags.</summary>
    public string Describe()
    {
        var flags = Architecture is Architecture.X64 or Architecture.X86
            ? $"AVX2 {YesNo(Avx2)}, AVX-512 {YesNo(Avx512)}, AVX512_BF16 {YesNo(Avx512Bf16)}, AMX-BF16 {YesNo(AmxBf16)}"
            : $"BF16 {YesNo(ArmBf16)}";
        return $"{Model} — class {ClassName}{(Forced ? $" (forced by {ClassVariable}, emulated on this CPU)" : "")}; {flags}";
    }

    static string YesNo(bool b) => b ? "yes" : "no";

    /// <summary>Forces <paramref name="cls"/> for this process until disposed (tests; the native libraries keep their setup).</summary>
    public static IDisposable Force(CpuClass cls)
    {
        var previous = _override;
        _override = WithClass(Detected, cls);
        return new Restore(() => _override = previous);
    }

    sealed class Restore(Action undo) : IDisposable
    {
        public void Dispose() => undo();
    }

    public static string Name(CpuClass c) => c switch
    {
        CpuClass.Amx => "amx",
        CpuClass.Avx512Bf16 => "avx512_bf16",
        CpuClass.Avx512 => "avx512",
        CpuClass.Avx2 => "avx2",
        CpuClass.Arm64Bf16 => "arm64_bf16",
        CpuClass.Arm64 => "arm64",
        _ => "other",
    };

    public static CpuClass? Parse(string? name) =>
        Enum.GetValues<CpuClass>().Cast<CpuClass?>().FirstOrDefault(c => Name(c!.Value) == name?.Trim().ToLowerInvariant());

    /// <summary>Detects the hardware and applies a forced class name (null or empty: none).</summary>
    public static CpuCapabilities Detect(string? forcedClass)
    {
        var hw = DetectHardware();
        if (string.IsNullOrWhiteSpace(forcedClass)) return hw;
        var forced = Parse(forcedClass) ?? throw new PeftConfigException(
            $"{ClassVariable}={forcedClass}: expected one of {string.Join(", ", Enum.GetValues<CpuClass>().Select(Name))}");
        if (!CanEmulate(hw.Class, forced))
            throw new PeftConfigException($"{ClassVariable}={forcedClass}: this CPU ({hw.ClassName}) cannot stand in for {Name(forced)}; only a class it includes can be forced");
        return WithClass(hw, forced);
    }

    /// <summary>Whether hardware of class <paramref name="hw"/> has everything <paramref name="target"/> has.</summary>
    public static bool CanEmulate(CpuClass hw, CpuClass target)
    {
        if (target == CpuClass.Other || hw == target) return true;
        bool x86 = hw <= CpuClass.Avx2, targetX86 = target <= CpuClass.Avx2;
        if (x86 != targetX86) return false;
        // Within x86 the enum runs best to worst; AMX machines have AVX512_BF16 too. Arm64Bf16 includes Arm64.
        return target >= hw;
    }

    /// <summary>The same CPU described as <paramref name="cls"/>: the flags above the class are cleared.</summary>
    static CpuCapabilities WithClass(CpuCapabilities hw, CpuClass cls) => hw with
    {
        Avx2 = hw.Avx2 && cls <= CpuClass.Avx2,
        Avx512 = hw.Avx512 && cls <= CpuClass.Avx512,
        Avx512Bf16 = hw.Avx512Bf16 && cls <= CpuClass.Avx512Bf16,
        AmxBf16 = hw.AmxBf16 && cls == CpuClass.Amx,
        ArmBf16 = hw.ArmBf16 && cls == CpuClass.Arm64Bf16,
        Class = cls,
        Forced = cls != hw.Class,
    };

    static CpuCapabilities DetectHardware()
    {
        var arch = RuntimeInformation.ProcessArchitecture;
        var (model, flags) = ReadProcCpuInfo();
        bool Flag(string f) => flags?.Contains(f) ?? false;
        if (arch is Architecture.X64 or Architecture.X86)
        {
            bool avx2 = System.Runtime.Intrinsics.X86.Avx2.IsSupported && Fma.IsSupported;
            bool avx512 = Avx512F.IsSupported && Avx512BW.IsSupported && Avx512DQ.IsSupported && Avx512F.VL.IsSupported;
            bool bf16, amx;
            if (flags is not null) { bf16 = Flag("avx512_bf16"); amx = Flag("amx_bf16") && Flag("amx_tile"); }
            else
            {
                // CPUID leaf 7: subleaf 1 EAX bit 5 = AVX512_BF16; subleaf 0 EDX bit 22 = AMX-BF16, bit 24 = AMX-TILE.
                var (_, _, _, edx0) = X86Base.IsSupported ? X86Base.CpuId(7, 0) : (0, 0, 0, 0);
                var (eax1, _, _, _) = X86Base.IsSupported ? X86Base.CpuId(7, 1) : (0, 0, 0, 0);
                bf16 = (eax1 & (1 << 5)) != 0;
                amx = (edx0 & (1 << 22)) != 0 && (edx0 & (1 << 24)) != 0;
            }
            bf16 &= avx512;
            var cls = amx && bf16 ? CpuClass.Amx : bf16 ? CpuClass.Avx512Bf16 : avx512 ? CpuClass.Avx512 : avx2 ? CpuClass.Avx2 : CpuClass.Other;
            return new CpuCapabilities(model ?? BrandString() ?? "x86 CPU", arch, avx2, avx512, bf16, amx && bf16, false, cls, false);
        }
        if (arch == Architecture.Arm64)
        {
            // .NET exposes no Arm BF16 intrinsics class; the kernel's feature list names it.
            bool bf16 = Flag("bf16");
            return new CpuCapabilities(model ?? "Arm64 CPU", arch, false, false, false, false, bf16,
                bf16 ? CpuClass.Arm64Bf16 : AdvSimd.IsSupported ? CpuClass.Arm64 : CpuClass.Other, false);
        }
        return new CpuCapabilities(model ?? arch.ToString(), arch, false, false, false, false, false, CpuClass.Other, false);
    }

    /// <summary>The first processor's model name and flag set (x86 "flags", Arm "Features"); nulls off Linux.</summary>
    static (string? Model, HashSet<string>? Flags) ReadProcCpuInfo()
    {
        try
        {
            if (!File.Exists("/proc/cpuinfo")) return (null, null);
            string? model = null; HashSet<string>? flags = null;
            foreach (var line in File.ReadLines("/proc/cpuinfo"))
            {
                int colon = line.IndexOf(':');
                if (colon < 0) { if (flags is not null && model is not null) break; continue; }
                var key = line[..colon].Trim();
                var value = line[(colon + 1)..].Trim();
                if (model is null && key is "model name" or "Model" or "Hardware") model = value;
                else if (flags is null && key is "flags" or "Features") flags = value.Split(' ', StringSplitOptions.RemoveEmptyEntries).ToHashSet();
                if (flags is not null && model is not null) break;
            }
            return (model, flags);
        }
        catch (IOException) { return (null, null); }
        catch (UnauthorizedAccessException) { return (null, null); }
    }

    /// <summary>CPUID's brand string (leaves 0x80000002-4).</summary>
    static string? BrandString()
    {
        if (!X86Base.IsSupported || (uint)X86Base.CpuId(unchecked((int)0x80000000), 0).Eax < 0x80000004) return null;
        Span<int> regs = stackalloc int[12];
        for (int i = 0; i < 3; i++)
        {
            var (a, b, c, d) = X86Base.CpuId(unchecked((int)0x80000002) + i, 0);
            regs[4 * i] = a; regs[4 * i + 1] = b; regs[4 * i + 2] = c; regs[4 * i + 3] = d;
        }
        return System.Text.Encoding.ASCII.GetString(MemoryMarshal.AsBytes(regs)).TrimEnd('\0').Trim();
    }

    /// <summary>
    /// Before libtorch loads: where a lower class was forced, caps the native libraries at its instruction set (the
    /// user's own settings win) so their kernel choices are the ones that class would get.
    /// </summary>
    internal static void ApplyEmulation()
    {
        CpuCapabilities cpu;
        try { cpu = Detected; }
        catch (PeftConfigException) { return; } // reported where the value is first used (TorchRuntime.EnsureInitialized)
        if (!cpu.Forced || !OperatingSystem.IsLinux()) return;
        var (mkl, onednn, aten) = cpu.Class switch
        {
            CpuClass.Avx512Bf16 => ("AVX512", "AVX512_CORE_BF16", "avx512"),
            CpuClass.Avx512 => ("AVX512", "AVX512_CORE", "avx512"),
            CpuClass.Avx2 => ("AVX2", "AVX2", "avx2"),
            _ => ((string?)null, (string?)null, (string?)null),
        };
        if (mkl is null) return;
        SetEnv("MKL_ENABLE_INSTRUCTIONS", mkl, 0);
        SetEnv("ONEDNN_MAX_CPU_ISA", onednn!, 0);
        SetEnv("ATEN_CPU_CAPABILITY", aten!, 0);
    }
}
