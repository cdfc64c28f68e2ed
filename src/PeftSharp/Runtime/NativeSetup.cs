using System.Runtime.CompilerServices;

namespace PeftSharp.Runtime;

/// <summary>
/// Everything that must happen before libtorch (and its OpenMP and MKL) load, in the order it depends on: the CPU
/// class (which may cap the native libraries' instruction sets), the OpenMP thread and wait settings, MKL's AVX-512
/// path on AMD, glibc's allocator thresholds. Runs when the PeftSharp assembly loads.
/// </summary>
static class NativeSetup
{
    [ModuleInitializer]
    internal static void Run()
    {
        CpuCapabilities.ApplyEmulation();
        ThreadPolicy.ConfigureOpenMp();
        MklAmdDispatch.Enable();
        TorchRuntime.ConfigureAllocator();
    }
}
