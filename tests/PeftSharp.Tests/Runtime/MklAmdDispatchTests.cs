using System.Diagnostics;
using System.Runtime.InteropServices;
using System.Text.Json;
using PeftSharp.Runtime;
using static TorchSharp.torch;

namespace PeftSharp.Tests.Runtime;

public class MklAmdDispatchTests
{
    [DllImport("libc", EntryPoint = "dlopen")] static extern nint DlOpen(string file, int flags);
    [DllImport("libc", EntryPoint = "dlsym")] static extern nint DlSym(nint handle, string name);
    [DllImport("libc", EntryPoint = "getenv")] static extern nint GetEnv(string name);

    [Fact]
    public void Mkl_runs_its_avx512_kernels_on_qualifying_amd_cpus_and_its_own_choice_elsewhere()
    {
        TorchRuntime.EnsureInitialized();
        using (var a = randn(64, 64)) using (var c = a.matmul(a)) { } // MKL settles its code path on first use
        if (MklAmdDispatch.CpuQualifies && Environment.GetEnvironmentVariable(MklAmdDispatch.OptOutVariable) != "0")
        {
            Assert.True(MklAmdDispatch.Enabled, MklAmdDispatch.Status);
            Assert.Equal(CpuCapabilities.Detected.Avx512 ? "AVX-512 on AMD" : "AVX2 on AMD (MKL's Intel AVX2 kernels)", MklAmdDispatch.Status);
            Assert.Equal(MklAmdDispatch.ExpectedBranch, MklAmdDispatch.MklCpuBranch());
            // MKL reads its reproducibility mode from the native environment; the dispatch sets it unless the user did.
            Assert.NotNull(Marshal.PtrToStringAnsi(GetEnv("MKL_CBWR")));
        }
        else
        {
            Assert.False(MklAmdDispatch.Enabled);
            Assert.StartsWith("vendor default", MklAmdDispatch.Status);
        }
    }

    [Fact]
    public unsafe void The_checked_in_shim_answers_mkls_vendor_test_with_yes()
    {
        if (!OperatingSystem.IsLinux() || RuntimeInformation.ProcessArchitecture != Architecture.X64) return;
        var path = Path.Combine(AppContext.BaseDirectory, MklAmdDispatch.ShimFileName);
        Assert.True(File.Exists(path), $"{path} is copied next to the assemblies");
        var lib = DlOpen(path, 2);
        Assert.NotEqual(0, lib);
        var fn = DlSym(lib, "mkl_serv_intel_cpu_true");
        Assert.NotEqual(0, fn);
        Assert.Equal(1, ((delegate* unmanaged<int>)fn)());
    }

    [Fact]
    public void Fp32_matmul_on_the_chosen_kernels_matches_a_float64_reference()
    {
        TorchRuntime.EnsureInitialized();
        manual_seed(3);
        using var scope = NewDisposeScope();
        var x = randn(300, 517); var w = randn(1029, 517);
        var got = nn.functional.linear(x, w);
        var want = nn.functional.linear(x.to(float64), w.to(float64)).to(float32);
        Assert.True(got.allclose(want, rtol: 1e-5, atol: 1e-4), $"max diff {(got - want).abs().max().item<float>()}");
    }

    [Fact]
    public void Setting_the_opt_out_variable_to_0_keeps_mkls_vendor_default()
    {
        var peft = Path.Combine(AppContext.BaseDirectory, "peft.dll");
        var psi = new ProcessStartInfo("dotnet") { RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (var a in new[] { peft, "info", "--model", TestPaths.Model("llama-tiny"), "--json" }) psi.ArgumentList.Add(a);
        psi.Environment[MklAmdDispatch.OptOutVariable] = "0";
        using var p = Process.Start(psi)!;
        var stdout = p.StandardOutput.ReadToEnd();
        var stderr = p.StandardError.ReadToEnd();
        p.WaitForExit();
        Assert.True(p.ExitCode == 0, stderr);
        var status = JsonDocument.Parse(stdout).RootElement
            .GetProperty("mkl_kernels").GetString();
        Assert.StartsWith("vendor default", status);
        if (MklAmdDispatch.CpuQualifies) Assert.Contains($"{MklAmdDispatch.OptOutVariable}=0", status);
    }
}
