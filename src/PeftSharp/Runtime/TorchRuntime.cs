using System.Runtime.InteropServices;
using TorchSharp;

namespace PeftSharp.Runtime;

/// <summary>
/// Process-wide native setup. We raise glibc's mmap/trim thresholds before the first tensor exists, so big tensor
/// buffers are reused from the heap instead of being mapped, faulted in and unmapped every step, and trim
/// periodically from long loops. Also checks the libstdc++ that libtorch 2.10 needs.
/// </summary>
public static class TorchRuntime
{
    public const string RequiredGlibcxx = "GLIBCXX_3.4.32";
    const string SetupHint = "run scripts/setup.sh as root (it installs libstdc++6 from Debian 13), or install libstdc++ from GCC 13 or newer";

    static readonly object Gate = new();
    static bool _checked;

    [DllImport("libc", EntryPoint = "mallopt")] static extern int MallOpt(int param, int value);
    [DllImport("libc", EntryPoint = "malloc_trim")] static extern int MallocTrim(nuint pad);

    const int M_TRIM_THRESHOLD = -1, M_MMAP_THRESHOLD = -3;

    /// <summary>Runs when the PeftSharp assembly loads (<see cref="NativeSetup"/>), i.e. before any tensor this library makes.</summary>
    internal static void ConfigureAllocator()
    {
        if (!OperatingSystem.IsLinux()) return;
        try
        {
            // libtorch's THP_MEM_ALLOC_ENABLE is left off: its 2 MB-aligned, MADV_HUGEPAGE buffers cost page-fault
            // stalls (train-step bf16 LoRA 0.383-0.423 s against 0.362-0.390 s without) and ~100 MB more peak RSS in fp32.
            MallOpt(M_MMAP_THRESHOLD, 1 << 30);
            MallOpt(M_TRIM_THRESHOLD, int.MaxValue);
        }
        catch (Exception) { /* non-glibc libc: nothing to tune */ }
    }

    /// <summary>
    /// Runs the finalizers of TorchSharp objects nobody disposed (the Scalars that numbers in tensor expressions become,
    /// and the like). Each holds a tiny native allocation; left scattered among freed tensor memory they keep glibc from
    /// reusing it, so RSS grew step after step (train-step bench: 1.05 → 1.45 GB over six steps) although every tensor
    /// was disposed. A full collection costs 1-2 ms; the trainer runs one after any step that ends 200 ms or more after the last.
    /// </summary>
    public static void CollectUndisposed()
    {
        GC.Collect();
        GC.WaitForPendingFinalizers();
    }

    /// <summary>For long decode loops: undisposed objects collected, then freed heap memory given back to the OS.</summary>
    public static void CollectAndTrim()
    {
        CollectUndisposed();
        TrimMemory();
    }

    /// <summary>Give freed heap memory back to the OS (glibc); call every few hundred steps and after big loads.</summary>
    public static void TrimMemory()
    {
        if (!OperatingSystem.IsLinux()) return;
        try { MallocTrim(0); } catch (Exception) { }
    }

    /// <summary>Checks the native prerequisites once and loads libtorch; throws <see cref="PeftPlatformException"/> naming the fix.</summary>
    public static void EnsureInitialized()
    {
        if (_checked) return;
        lock (Gate)
        {
            if (_checked) return;
            _ = CpuCapabilities.Detected; // a bad PEFTSHARP_CPU_CLASS is reported here, as one line
            CheckLibStdCxx();
            try
            {
                torch.InitializeDeviceType(DeviceType.CPU);
                ThreadPolicy.ApplyInitial();
            }
            catch (Exception e) when (e is DllNotFoundException or TypeInitializationException or NotSupportedException)
            {
                throw new PeftPlatformException(
                    $"TorchSharp's native library could not be loaded ({e.GetBaseException().Message}). " +
                    $"It needs {RequiredGlibcxx} (libstdc++ of GCC 13+) and a TorchSharp native package " +
                    $"(TorchSharp-cpu or TorchSharp-cuda-linux) referenced by the application; {SetupHint}.");
            }
            _checked = true;
        }
    }

    static void CheckLibStdCxx()
    {
        if (OperatingSystem.IsLinux()) CheckLibStdCxx(FindLibStdCxx());
    }

    /// <summary>Throws when <paramref name="lib"/> lacks the symbol; separate from the lookup so tests can pass any file.</summary>
    internal static void CheckLibStdCxx(string? lib)
    {
        if (lib is null) return; // a static or unusual toolchain: let the native load decide
        if (!FileContains(lib, RequiredGlibcxx))
            throw new PeftPlatformException(
                $"{lib} lacks {RequiredGlibcxx}, which TorchSharp 0.107 (libtorch 2.10) needs; {SetupHint}.");
    }

    internal static string? FindLibStdCxx()
    {
        string[] candidates =
        {
            "/usr/lib/x86_64-linux-gnu/libstdc++.so.6", "/usr/lib/aarch64-linux-gnu/libstdc++.so.6",
            "/usr/lib64/libstdc++.so.6", "/usr/lib/libstdc++.so.6",
        };
        return candidates.FirstOrDefault(File.Exists);
    }

    internal static bool FileContains(string path, string ascii)
    {
        var needle = System.Text.Encoding.ASCII.GetBytes(ascii);
        var data = File.ReadAllBytes(path);
        return data.AsSpan().IndexOf(needle) >= 0;
    }
}
