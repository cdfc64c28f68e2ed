using System.Text.Json.Nodes;
using PeftSharp.Models;
using PeftSharp.Training;
using PeftSharp.Training.Data;
using PeftSharp.Tuners;
using PeftSharp.Tuners.AdaLora;
using PeftSharp.Tuners.AdapterHub;
using PeftSharp.Tuners.DeltaLora;
using PeftSharp.Tuners.Lora;
using PeftSharp.Tuners.PromptLearning;
using PeftSharp.Tuners.Vera;
using static TorchSharp.torch;

namespace PeftSharp.Tests.Training;

/// <summary>
/// The trainer's bf16 mode keeps frozen projections' outputs in bfloat16 (autocast-like), so every method's float32
/// pieces meet bfloat16 activations somewhere: each must train, stay close to float32 and keep float32 weights.
/// </summary>
public class Bf16ModeTests
{
    static readonly StringOrList AllLinear = StringOrList.Of(TargetMatcher.AllLinear);

    static PeftConfig Config(string method, PreTrainedModel m) => method switch
    {
        "lora" => new LoraConfig { R = 4, LoraAlpha = 8, TargetModules = AllLinear },
        "dora" => new LoraConfig { R = 4, LoraAlpha = 8, TargetModules = AllLinear, UseDora = true },
        "vera" => new VeraConfig { R = 8, TargetModules = StringOrList.Of("q_proj", "v_proj") },
        "adalora" => new AdaLoraConfig { Lora = new LoraConfig { R = 4, LoraAlpha = 8, TargetModules = AllLinear }, InitR = 4, TargetR = 2, TotalStep = 10 },
        "delta_lora" => new DeltaLoraConfig { Lora = new LoraConfig { R = 4, LoraAlpha = 8, TargetModules = AllLinear }, StartSteps = 1 },
        "prompt_tuning" or "p_tuning" or "prefix_tuning" or "llama_adapter" =>
            PromptFamily.Config(method, new PromptFamilySettings { NumVirtualTokens = 4, AdapterLen = 4 }, m.IsCausalLM ? "CAUSAL_LM" : "SEQ_CLS", m.Config.NumHiddenLayers),
        "seq_bn" or "par_bn" => AdapterFamilyTypes.Create("adapter", new Dictionary<string, JsonNode?> { ["adapter_config"] = method, ["reduction_factor"] = 4 }),
        "mam" or "unipelt" or "bitfit" => AdapterFamilyTypes.Create(method, new Dictionary<string, JsonNode?>()),
        _ => throw new ArgumentException(method),
    };

    static List<StepRecord> Train(string method, bool bf16, out PeftModel peft, out PreTrainedModel model)
    {
        model = TrainerTests.TinyLlama();
        manual_seed(5);
        peft = PeftModel.Create(model, Config(method, model));
        var args = new TrainingArguments
        {
            OutputDir = TestPaths.TempDir(), LearningRate = 5e-3, MaxSteps = 3, PerDeviceTrainBatchSize = 4, LoggingSteps = 1,
            Shuffle = false, Bf16 = bf16,
        };
        return TrainerTests.Run(AdapterTargets.Peft(peft) with { Save = _ => { } }, args, TrainerTests.Rows(8));
    }

    [Theory]
    [InlineData("lora")]
    [InlineData("dora")]
    [InlineData("vera")]
    [InlineData("adalora")]
    [InlineData("delta_lora")]
    [InlineData("prompt_tuning")]
    [InlineData("p_tuning")]
    [InlineData("prefix_tuning")]
    [InlineData("llama_adapter")]
    [InlineData("seq_bn")]
    [InlineData("par_bn")]
    [InlineData("mam")]
    [InlineData("unipelt")]
    [InlineData("bitfit")]
    public void Every_method_trains_in_bf16_mode_close_to_float32(string method)
    {
        var fp32 = Train(method, false, out var p32, out var m32);
        var bf16 = Train(method, true, out var p16, out var m16);
        using (m32) using (m16)
        {
            Assert.Equal(fp32.Count, bf16.Count);
            // bf16 activations carry ~3 significant digits: the first loss (same init, same batch) agrees to about 1%.
            Assert.InRange(bf16[0].Loss, fp32[0].Loss * 0.98, fp32[0].Loss * 1.02);
            Assert.All(bf16, s => Assert.True(double.IsFinite(s.Loss) && double.IsFinite(s.GradNorm) && s.GradNorm > 0, $"{method}: step {s.Step} loss {s.Loss} grad norm {s.GradNorm}"));
            var trainable = p16.named_parameters().Where(p => p.parameter.requires_grad).ToList();
            Assert.NotEmpty(trainable);
            Assert.All(trainable, p => Assert.Equal(ScalarType.Float32, p.parameter.dtype));
        }
    }

    [Fact]
    public void Lora_projections_run_in_bfloat16_and_the_residual_stream_in_float32()
    {
        using var model = TrainerTests.TinyLlama();
        var peft = PeftModel.Create(model, new LoraConfig { R = 4, LoraAlpha = 8, TargetModules = AllLinear });
        Bf16Base.Apply(peft);
        var q = (LoraLinear)ModuleSurgery.Get(model, "model.layers.0.self_attn.q_proj");
        Assert.Null(q.AutocastDtype);
        // The trainer enters this around each step: the adapters read it from the forward context.
        using var autocast = Bf16Base.Autocast(true);
        Assert.Equal(ScalarType.BFloat16, q.AutocastDtype);
        using var x = randn(2, 5, 32);
        Assert.Equal(ScalarType.BFloat16, q.call(x).dtype);
        using var ids = tensor(new long[,] { { 1, 2, 3, 4 } });
        using var logits = model.Forward(new ModelInputs { InputIds = ids }).Logits;
        Assert.Equal(ScalarType.BFloat16, logits.dtype); // lm_head is a frozen projection too; the loss upcasts
        Assert.Equal(ScalarType.Float32, q.A("default").dtype);
    }

    [Fact]
    public void Full_fine_tuning_in_bf16_mode_computes_in_bfloat16_from_float32_weights()
    {
        List<StepRecord> Run(bool bf16, out PreTrainedModel model)
        {
            model = TrainerTests.TinyLlama();
            var args = new TrainingArguments { OutputDir = TestPaths.TempDir(), LearningRate = 1e-3, MaxSteps = 3, PerDeviceTrainBatchSize = 4, Shuffle = false, Bf16 = bf16 };
            return TrainerTests.Run(TrainingTarget.Full(model) with { Save = _ => { } }, args, TrainerTests.Rows(8));
        }
        var fp32 = Run(false, out var m32);
        var bf16 = Run(true, out var m16);
        using (m32) using (m16)
        {
            Assert.IsType<AutocastLinear>(ModuleSurgery.Get(m16, "model.layers.0.self_attn.q_proj"));
            Assert.Equal(m32.state_dict().Keys.Order(), m16.state_dict().Keys.Order());
            Assert.All(m16.parameters(), p => Assert.Equal(ScalarType.Float32, p.dtype));
            Assert.InRange(bf16[0].Loss, fp32[0].Loss * 0.98, fp32[0].Loss * 1.02);
            Assert.True(bf16[^1].Loss < bf16[0].Loss, $"loss {bf16[0].Loss} -> {bf16[^1].Loss}");
            // The updates reached the float32 master weights.
            using var init = TrainerTests.TinyLlama();
            Tensor Q(PreTrainedModel m) => m.named_parameters().First(p => p.name == "model.layers.0.self_attn.q_proj.weight").parameter;
            Assert.False(Q(m16).allclose(Q(init)));
        }
    }
}
