/*
 * libpeftsharp_mkl_amd.so: lets the MKL inside libtorch_cpu.so pick its AVX-512 kernels on AMD CPUs.
 *
 * MKL chooses its code path by CPU vendor before features: on a non-Intel CPU it runs its AVX2 kernels even
 * where the CPU has AVX-512 (AMD Zen 4 and 5). libtorch_cpu.so exports MKL's vendor test and calls it through
 * its PLT, so a definition loaded earlier into the global symbol scope (dlopen RTLD_GLOBAL) takes its place.
 * MKL then dispatches on the CPUID feature bits alone. PeftSharp loads this only on AMD CPUs with AVX-512F/BW/DQ/VL.
 *
 * Build: scripts/build-native.sh (the .so next to this file is its output, checked in so users need no compiler).
 */
int mkl_serv_intel_cpu_true(void) { return 1; }
