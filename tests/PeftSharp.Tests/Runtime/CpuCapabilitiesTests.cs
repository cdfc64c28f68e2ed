using System.Diagnostics;
using System.Text.Json;
using PeftSharp.Models;
using PeftSharp.Runtime;
using PeftSharp.Tests.Training;
using PeftSharp.Training;
using PeftSharp.Tuners;
using PeftSharp.Tuners.Lora;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace PeftSharp.Tests.Runtime;

public class CpuCapabilitiesTests
{
    [Fact]
    public void Detection_names_the_cpu_and_a_class_consistent_with_its_flags()
    {
        var cpu = CpuCapabilities.Detect(null);
        Assert.False(cpu.Forced);
        Assert.False(string.IsNullOrWhiteSpace(cpu.Model));
        if (cpu.Avx512Bf16) Assert.True(cpu.Avx512);
        if (cpu.Avx512) Assert.True(cpu.Avx2);
        var expected = cpu.AmxBf16 ? CpuClass.Amx : cpu.Avx512Bf16 ? CpuClass.Avx512Bf16 : cpu.Avx512 ? CpuClass.Avx512 : cpu.Avx2 ? CpuClass.Avx2 : cpu.Class;
        Assert.Equal(expected, cpu.Class);
        // This project's machines are x86 with AVX2 at least; /proc/cpuinfo and the JIT's intrinsics agree on AVX2.
        if (File.Exists("/proc/cpuinfo") && System.Runtime.Intrinsics.X86.Avx2.IsSupported)
            Assert.Equal(File.ReadAllText("/proc/cpuinfo").Contains(" avx512_bf16"), cpu.Avx512Bf16);
        Assert.Contains(cpu.ClassName, cpu.Describe());
    }

    [Fact]
    public void A_forced_class_clears_the_flags_above_it_and_a_better_one_than_the_hardware_is_refused()
    {
        var hw = CpuCapabilities.Detect(null);
        if (hw.Class > CpuClass.Avx2) return; // not x86 with AVX2
        var avx2 = CpuCapabilities.Detect("AVX2");
        Assert.Equal(CpuClass.Avx2, avx2.Class);
        Assert.False(avx2.Avx512 || avx2.Avx512Bf16 || avx2.AmxBf16);
        Assert.False(avx2.NativeBf16);
        Assert.Equal(hw.Class != CpuClass.Avx2, avx2.Forced);
        if (hw.Class == CpuClass.Avx512Bf16)
            Assert.Contains("cannot stand in for amx", Assert.Throws<PeftConfigException>(() => CpuCapabilities.Detect("amx")).Message);
        Assert.Contains("arm64", Assert.Throws<PeftConfigException>(() => CpuCapabilities.Detect("arm64")).Message);
        Assert.Contains("expected one of", Assert.Throws<PeftConfigException>(() => CpuCapabilities.Detect("avx3")).Message);
    }

    [Theory]
    [InlineData(CpuClass.Amx, null, true)]
    [InlineData(CpuClass.Avx512Bf16, null, true)]
    [InlineData(CpuClass.Arm64Bf16, "auto", true)]
    [InlineData(CpuClass.Avx512, null, false)]
    [InlineData(CpuClass.Avx2, null, false)]
    [InlineData(CpuClass.Arm64, null, false)]
    [InlineData(CpuClass.Avx2, "bf16", true)]
    [InlineData(CpuClass.Avx512Bf16, "fp32", false)]
    public void Bf16_computes_in_bfloat16_only_on_native_bf16_cpus_unless_overridden(CpuClass cls, string? setting, bool bf16)
    {
        var cpu = CpuCapabilities.Detect(null) with { Class = cls };
        var (dtype, line) = Bf16Policy.Decide(cpu, setting);
        Assert.Equal(bf16 ? ScalarType.BFloat16 : ScalarType.Float32, dtype);
        Assert.StartsWith("bf16: ", line);
        Assert.DoesNotContain('\n', line);
        Assert.Contains("PEFTSHARP_BF16_COMPUTE=fast", Assert.Throws<PeftConfigException>(() => Bf16Policy.Decide(cpu, "fast")).Message);
    }

    static List<StepRecord> TrainLora(bool bf16, bool roundBaseToBf16, out PreTrainedModel model)
    {
        model = TrainerTests.TinyLlama();
        if (roundBaseToBf16)
            using (no_grad()) foreach (var p in model.parameters()) p.copy_(p.to(ScalarType.BFloat16));
        manual_seed(5);
        var peft = PeftModel.Create(model, new LoraConfig { R = 4, LoraAlpha = 8, TargetModules = StringOrList.Of(TargetMatcher.AllLinear) });
        var args = new TrainingArguments
        {
            OutputDir = TestPaths.TempDir(), LearningRate = 5e-3, MaxSteps = 4, PerDeviceTrainBatchSize = 4, Shuffle = false, Bf16 = bf16,
        };
        return TrainerTests.Run(AdapterTargets.Peft(peft) with { Save = _ => { } }, args, TrainerTests.Rows(8));
    }

    [Fact]
    public void On_a_cpu_without_native_bf16_bf16_mode_stores_in_bfloat16_and_follows_the_float32_trajectory()
    {
        List<StepRecord> bf16;
        PreTrainedModel m16;
        using (CpuCapabilities.Force(CpuClass.Avx2))
        {
            Assert.Equal(ScalarType.Float32, Bf16Policy.ComputeDtype);
            bf16 = TrainLora(true, false, out m16);
        }
        var fp32 = TrainLora(false, false, out var m32);
        // The same fp32 run from base weights rounded through bfloat16 is what bf16 storage + fp32 compute must give.
        var rounded = TrainLora(false, true, out var mr);
        using (m16) using (m32) using (mr)
        {
            var q = (LoraLinear)ModuleSurgery.Get(m16, "model.layers.0.self_attn.q_proj");
            var baseQ = (Linear)q.BaseLayer;
            Assert.Equal(ScalarType.BFloat16, baseQ.weight!.dtype);
            Assert.Equal(ScalarType.BFloat16, m16.named_parameters().First(p => p.name == "model.embed_tokens.weight").parameter.dtype);
            Assert.Equal(ScalarType.Float32, q.A("default").dtype);
            using (CpuCapabilities.Force(CpuClass.Avx2)) Assert.Null(Bf16Base.Autocast(true));
            using (no_grad())
            using (var x = randn(2, 5, 32))
            using (var y = q.call(x))
                Assert.Equal(ScalarType.Float32, y.dtype);
            Assert.Equal(rounded.Count, bf16.Count);
            for (int i = 0; i < bf16.Count; i++)
            {
                Assert.Equal(rounded[i].Loss, bf16[i].Loss, 4);
                Assert.Equal(rounded[i].GradNorm, bf16[i].GradNorm, 3);
                // Against true fp32 weights only the bf16 rounding of the frozen weights differs.
                Assert.InRange(bf16[i].Loss, fp32[i].Loss * 0.99, fp32[i].Loss * 1.01);
            }
            Assert.True(bf16[^1].Loss < bf16[0].Loss);
        }
    }

    [Fact]
    public void The_widened_linear_matches_a_float32_linear_forward_and_backward()
    {
        manual_seed(11);
        using var scope = NewDisposeScope();
        var w = randn(7, 5).to(ScalarType.BFloat16);
        var b = randn(7).to(ScalarType.BFloat16);
        var x = randn(3, 4, 5).requires_grad_(true);
        var y = Bf16StoredLinear.Compute(x, w, b);
        y.pow(2).sum().backward();
        var x2 = x.detach().clone().requires_grad_(true);
        var y2 = nn.functional.linear(x2, w.to(ScalarType.Float32), b.to(ScalarType.Float32));
        y2.pow(2).sum().backward();
        Assert.Equal(ScalarType.Float32, y.dtype);
        Assert.True(y.allclose(y2, rtol: 1e-6, atol: 1e-6));
        Assert.True(x.grad!.allclose(x2.grad!, rtol: 1e-6, atol: 1e-6));
    }

    [Fact]
    public void Chained_widened_linears_of_different_shapes_share_one_buffer_and_still_match_float32()
    {
        // Every layer widens into the same per-thread buffer; the backward of the first must not see the second's weight.
        manual_seed(12);
        using var scope = NewDisposeScope();
        var w1 = randn(9, 5).to(ScalarType.BFloat16);
        var w2 = randn(3, 9).to(ScalarType.BFloat16);
        var x = randn(4, 5).requires_grad_(true);
        Bf16StoredLinear.Compute(Bf16StoredLinear.Compute(x, w1, null).relu(), w2, null).pow(2).sum().backward();
        var x2 = x.detach().clone().requires_grad_(true);
        var h = nn.functional.linear(x2, w1.to(ScalarType.Float32)).relu();
        nn.functional.linear(h, w2.to(ScalarType.Float32)).pow(2).sum().backward();
        Assert.True(x.grad!.allclose(x2.grad!, rtol: 1e-6, atol: 1e-6));
    }

    [Fact]
    public void Peft_info_names_the_cpu_class_and_a_forced_avx2_class_gets_mkls_avx2_kernels_on_amd()
    {
        var peft = Path.Combine(AppContext.BaseDirectory, "peft.dll");
        var psi = new ProcessStartInfo("dotnet") { RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (var a in new[] { peft, "info", "--model", TestPaths.Model("llama-tiny"), "--json" }) psi.ArgumentList.Add(a);
        psi.Environment[CpuCapabilities.ClassVariable] = "avx2";
        using var p = Process.Start(psi)!;
        var stdout = p.StandardOutput.ReadToEnd();
        var stderr = p.StandardError.ReadToEnd();
        p.WaitForExit();
        if (CpuCapabilities.Detect(null).Class > CpuClass.Avx2)
        {
            Assert.NotEqual(0, p.ExitCode);
            return;
        }
        Assert.True(p.ExitCode == 0, stderr);
        var root = JsonDocument.Parse(stdout).RootElement;
        Assert.Contains("class avx2", root.GetProperty("cpu").GetString());
        Assert.Equal("float32", root.GetProperty("bf16_compute").GetString());
        // An AVX2-only AMD CPU (Zen 1-3), emulated: the shim gives MKL's Intel AVX2 kernels instead of its vendor default.
        if (MklAmdDispatch.CpuQualifies) Assert.Equal("AVX2 on AMD (MKL's Intel AVX2 kernels)", root.GetProperty("mkl_kernels").GetString());
        else Assert.StartsWith("vendor default", root.GetProperty("mkl_kernels").GetString());
    }
}
