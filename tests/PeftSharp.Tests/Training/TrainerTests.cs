using System.Text.Json.Nodes;
using PeftSharp.Models;
using PeftSharp.Training;
using PeftSharp.Training.Data;
using TorchSharp;
using static TorchSharp.torch;

namespace PeftSharp.Tests.Training;

public class TrainerTests
{
    internal static PreTrainedModel TinyLlama(int seed = 7, int vocab = 32, int hidden = 32, int layers = 2)
    {
        manual_seed(seed);
        var config = AutoModel.ParseConfig(new JsonObject
        {
            ["model_type"] = "llama", ["vocab_size"] = vocab, ["hidden_size"] = hidden, ["intermediate_size"] = hidden * 2,
            ["num_hidden_layers"] = layers, ["num_attention_heads"] = 4, ["num_key_value_heads"] = 2,
            ["tie_word_embeddings"] = false, ["initializer_range"] = 0.1, ["pad_token_id"] = 0,
        });
        return AutoModel.FromConfig(config);
    }

    /// <summary>Rows of different lengths with the first two label positions masked (uneven token counts per row).</summary>
    internal static List<TrainExample> Rows(int count, int vocab = 32, int seed = 3)
    {
        var rng = new Random(seed);
        return Enumerable.Range(0, count).Select(i =>
        {
            int len = 5 + rng.Next(6);
            int start = 1 + rng.Next(vocab - 1);
            var ids = Enumerable.Range(0, len).Select(j => 1 + (start + j) % (vocab - 1)).ToArray();
            var labels = ids.Select((t, j) => j < 2 ? -100 : t).ToArray();
            return new TrainExample { InputIds = ids, Labels = labels };
        }).ToList();
    }

    static TrainingArguments Args(string dir, int steps) => new()
    {
        OutputDir = dir, LearningRate = 5e-3, MaxSteps = steps, PerDeviceTrainBatchSize = 2, LoggingSteps = 1,
        WarmupSteps = 1, WeightDecay = 0.01, Seed = 11,
    };

    [Fact]
    public void Schedules_follow_transformers_lambdas()
    {
        var linear = Enumerable.Range(0, 8).Select(k => 1e-3 * LrSchedule.Factor("linear", k, 2, 8)).ToArray();
        double[] expected = { 0.0, 0.0005, 0.001, 0.0008333333333333334, 0.0006666666666666666, 0.0005, 0.0003333333333333333, 0.00016666666666666666 };
        for (int k = 0; k < 8; k++) Assert.Equal(expected[k], linear[k], 15);
        Assert.Equal(0.5, LrSchedule.Factor("cosine", 6, 2, 10), 12);
        Assert.Equal(1.0, LrSchedule.Factor("cosine", 2, 2, 10), 12);
        Assert.Equal(0.0, LrSchedule.Factor("cosine", 10, 2, 10), 12);
        Assert.Equal(0.5, LrSchedule.Factor("constant_with_warmup", 2, 4, 10), 12);
        Assert.Equal(1.0, LrSchedule.Factor("constant_with_warmup", 7, 4, 10), 12);
        Assert.Equal(1.0, LrSchedule.Factor("constant", 0, 4, 10), 12);
        Assert.Equal(3, new TrainingArguments { WarmupRatio = 0.1 }.WarmupStepsFor(25));
        Assert.Throws<PeftConfigException>(() => LrSchedule.Validate("polynomial_x"));
    }

    [Fact]
    public void Decay_groups_exclude_biases_and_norms()
    {
        using var m = TinyLlama();
        var groups = OptimizerGroups.Default(m, 1e-3, 0.1);
        var noDecay = groups.Single(g => g.Name == "no_decay").Params.Select(p => p.Name).ToList();
        Assert.Contains("model.norm.weight", noDecay);
        Assert.Contains("model.layers.0.input_layernorm.weight", noDecay);
        Assert.Equal(2 * 2 + 1, noDecay.Count);
        Assert.Contains("lm_head.weight", groups.Single(g => g.Name == "decay").Params.Select(p => p.Name));
    }

    /// <summary>Full fine-tuning of <paramref name="m"/>; see the target overload.</summary>
    static List<StepRecord> Run(PreTrainedModel m, TrainingArguments args, IReadOnlyList<TrainExample> data, int? stopAfter = null) =>
        Run(TrainingTarget.Full(m), args, data, stopAfter);

    /// <summary>Trains and returns every step's record; with <paramref name="stopAfter"/> the run is interrupted after that step.</summary>
    internal static List<StepRecord> Run(TrainingTarget target, TrainingArguments args, IReadOnlyList<TrainExample> data, int? stopAfter = null)
    {
        var steps = new List<StepRecord>();
        using var cts = new CancellationTokenSource();
        using var trainer = new Trainer(target, args, data);
        trainer.StepCompleted += s => { steps.Add(s); if (s.Step == stopAfter) cts.Cancel(); };
        try { trainer.Train(cts.Token); } catch (OperationCanceledException) when (stopAfter is not null) { }
        return steps;
    }

    [Fact]
    public void Gradient_accumulation_normalizes_by_the_whole_batch_token_count()
    {
        var data = Rows(4);
        var dir = TestPaths.TempDir();
        List<StepRecord> full, accum;
        using (var m = TinyLlama()) full = Run(m, Args(dir, 3) with { PerDeviceTrainBatchSize = 4, Shuffle = false, WarmupSteps = 0 }, data);
        using (var m = TinyLlama()) accum = Run(m, Args(dir, 3) with { PerDeviceTrainBatchSize = 2, GradientAccumulationSteps = 2, Shuffle = false, WarmupSteps = 0 }, data);
        for (int k = 0; k < 3; k++)
        {
            Assert.Equal(full[k].Loss, accum[k].Loss, 1e-5);
            Assert.Equal(full[k].GradNorm, accum[k].GradNorm, 1e-5);
        }
        // The naive mean of micro-batch means differs when the halves hold different token counts.
        using var m2 = TinyLlama();
        using var b1 = TrainBatch.Collate(data.Take(2).ToList(), 0, CPU, false);
        using var b2 = TrainBatch.Collate(data.Skip(2).ToList(), 0, CPU, false);
        using var _ = no_grad();
        double naive = (Losses.CausalLM(m2.Forward(b1.InputIds, b1.AttentionMask).Logits, b1.Labels).ToDouble()
                      + Losses.CausalLM(m2.Forward(b2.InputIds, b2.AttentionMask).Logits, b2.Labels).ToDouble()) / 2;
        Assert.True(Math.Abs(naive - full[0].Loss) > 1e-4, $"naive {naive} vs {full[0].Loss}");
    }

    [Fact]
    public void Resumed_run_logs_the_same_losses_as_an_uninterrupted_one()
    {
        var data = Rows(6);
        var dirA = TestPaths.TempDir();
        var dirB = TestPaths.TempDir();
        List<StepRecord> straight;
        using (var m = TinyLlama()) straight = Run(m, Args(dirA, 6) with { NumTrainEpochs = 2 }, data);

        using (var m = TinyLlama())
        {
            var first = Run(m, Args(dirB, 6) with { SaveSteps = 2, SaveTotalLimit = 1 }, data, stopAfter: 4);
            Assert.Equal(4, first.Count);
        }
        Assert.Equal(new[] { "checkpoint-4" }, Directory.GetDirectories(dirB, "checkpoint-*").Select(Path.GetFileName).ToArray());

        List<StepRecord> resumed;
        using (var m = TinyLlama(seed: 99))
            resumed = Run(m, Args(dirB, 6) with { SaveSteps = 2, SaveTotalLimit = 1, ResumeFromCheckpoint = "last" }, data);
        Assert.Equal(new[] { 5, 6 }, resumed.Select(s => s.Step));
        for (int i = 0; i < 2; i++)
        {
            Assert.Equal(straight[4 + i].Loss, resumed[i].Loss);
            Assert.Equal(straight[4 + i].GradNorm, resumed[i].GradNorm);
            Assert.Equal(straight[4 + i].LearningRate, resumed[i].LearningRate);
        }
        var log = File.ReadAllLines(Path.Combine(dirB, "trainer_log.jsonl")).Select(l => JsonNode.Parse(l)!).Where(n => n["loss"] is not null).ToList();
        Assert.Equal(Enumerable.Range(1, 6), log.Select(n => n["step"]!.GetValue<int>()));
        Assert.True(File.Exists(Path.Combine(dirB, "model.safetensors")));
    }

    [Fact]
    public void Nan_loss_stops_with_the_step_named()
    {
        var data = Rows(4);
        using var m = TinyLlama();
        using var trainer = new Trainer(TrainingTarget.Full(m), Args(TestPaths.TempDir(), 5), data);
        trainer.StepCompleted += s =>
        {
            if (s.Step != 2) return;
            using var _ = no_grad();
            m.parameters().First().fill_(double.NaN);
        };
        var e = Assert.Throws<PeftSharpException>(() => trainer.Train());
        Assert.Contains("step 3", e.Message);
        Assert.Contains("NaN", e.Message);
    }

    [Fact]
    public void Gradient_checkpointing_gives_identical_loss_and_gradients()
    {
        var data = Rows(3);
        using var m = TinyLlama();
        using var batch = TrainBatch.Collate(data, 0, CPU, false);
        (double, Dictionary<string, Tensor>) LossAndGrads()
        {
            foreach (var p in m.parameters()) { p.requires_grad = true; p.grad = null; }
            var loss = Losses.CausalLM(m.Forward(batch.InputIds, batch.AttentionMask).Logits, batch.Labels);
            loss.backward();
            return (loss.ToDouble(), m.named_parameters().ToDictionary(p => p.name, p => p.parameter.grad!.clone()));
        }
        var (plain, plainGrads) = LossAndGrads();
        GradientCheckpointing.Enable(m);
        var (ckpt, ckptGrads) = LossAndGrads();
        GradientCheckpointing.Disable(m);
        Assert.Equal(plain, ckpt);
        foreach (var (name, g) in plainGrads)
            Assert.True(FixtureAssert.MaxAbsDiff(ckptGrads[name], g) <= 1e-7, name);
    }

    [Fact]
    public void Gradient_checkpointing_reaches_lora_weights_under_a_frozen_embedding()
    {
        var data = Rows(3);
        using var m = TinyLlama();
        var peft = PeftSharp.Tuners.PeftModel.Create(m, new PeftSharp.Tuners.Lora.LoraConfig
        {
            R = 4, LoraAlpha = 8, TargetModules = PeftSharp.Tuners.StringOrList.Of("q_proj", "v_proj"),
        });
        // B starts at zero, which would leave A without gradient.
        using (no_grad())
            foreach (var (name, p) in peft.named_parameters().Where(p => p.name.Contains("lora_B"))) p.normal_(0, 0.1);
        using var batch = TrainBatch.Collate(data, 0, CPU, false);
        Dictionary<string, Tensor> Grads()
        {
            foreach (var p in peft.parameters()) p.grad = null;
            Losses.CausalLM(m.Forward(batch.InputIds, batch.AttentionMask).Logits, batch.Labels).backward();
            return peft.named_parameters().Where(p => p.parameter.requires_grad).ToDictionary(p => p.name, p => p.parameter.grad!.clone());
        }
        var plain = Grads();
        GradientCheckpointing.Enable(m);
        var ckpt = Grads();
        GradientCheckpointing.Disable(m);
        Assert.Equal(8, plain.Count);
        foreach (var (name, g) in plain)
        {
            Assert.True(g.abs().max().ToDouble() > 0, name);
            Assert.True(FixtureAssert.MaxAbsDiff(ckpt[name], g) <= 1e-7, name);
        }
    }

    [Fact]
    public void Full_fine_tuning_learns_a_tiny_task()
    {
        var data = Rows(16);
        using var m = TinyLlama();
        var steps = Run(m, Args(TestPaths.TempDir(), 60) with { LearningRate = 1e-2, PerDeviceTrainBatchSize = 8, WarmupSteps = 5 }, data);
        Assert.True(steps[0].Loss > 2.5, $"first loss {steps[0].Loss}");
        Assert.True(steps[^1].Loss < 0.5, $"last loss {steps[^1].Loss}");
    }

    [Fact]
    public void Bf16_mode_keeps_trainable_weights_in_float32()
    {
        var data = Rows(4);
        using var m = TinyLlama();
        foreach (var (name, p) in m.named_parameters()) p.requires_grad = name.StartsWith("lm_head");
        var target = new TrainingTarget { Root = m, Model = m, Save = _ => { } };
        using var trainer = new Trainer(target, Args(TestPaths.TempDir(), 2) with { Bf16 = true }, data);
        var steps = new List<StepRecord>();
        trainer.StepCompleted += steps.Add;
        trainer.Train();
        var dtypes = m.named_parameters().ToDictionary(p => p.name, p => p.parameter.dtype);
        Assert.Equal(ScalarType.Float32, dtypes["lm_head.weight"]);
        Assert.Equal(ScalarType.BFloat16, dtypes["model.layers.0.self_attn.q_proj.weight"]);
        Assert.Equal(ScalarType.BFloat16, dtypes["model.embed_tokens.weight"]);
        Assert.All(steps, s => Assert.True(double.IsFinite(s.Loss) && s.Loss > 1));
    }
}
