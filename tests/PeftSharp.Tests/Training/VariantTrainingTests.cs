using PeftSharp.IO;
using PeftSharp.Models;
using PeftSharp.Tests.Tokenization;
using PeftSharp.Training;
using PeftSharp.Tuners;
using PeftSharp.Tuners.AdaLora;
using PeftSharp.Tuners.DeltaLora;
using static TorchSharp.torch;

namespace PeftSharp.Tests.Training;

/// <summary>
/// The LoRA variants through TrainConfig → TrainSetup → Trainer: the YAML keys, the method hooks the trainer runs
/// itself (LoRA-FA's optimizer, AdaLoRA's allocator and loss term, Delta-LoRA's W update) and resume.
/// </summary>
public class VariantTrainingTests
{
    static readonly string[] Common = { "model_name_or_path: m", "dataset: d.jsonl" };

    static TrainConfig Parse(params string[] lines) => TrainConfig.Parse(string.Join("\n", Common.Concat(lines)) + "\n", "run.yaml");

    static string Error(params string[] lines) => Assert.Throws<PeftConfigException>(() => Parse(lines)).Message;

    [Fact]
    public void Variant_keys_parse_into_settings()
    {
        var c = Parse("finetuning_type: adalora", "adalora_init_r: 6", "adalora_target_r: 2", "adalora_tinit: 3", "adalora_tfinal: 4",
            "adalora_delta_t: 2", "adalora_beta1: 0.8", "adalora_beta2: 0.9", "adalora_orth_reg_weight: 0.1", "adalora_total_step: 20");
        using var model = AutoModel.FromPretrained(TestPaths.Model("llama-tiny"));
        PeftConfig Built(TrainConfig config) => AdapterTargets.Config(model, config, "m", 100);
        var v = Assert.IsType<AdaLoraConfig>(Built(c));
        Assert.Equal((6, 2, 3, 4, 2, 0.8, 0.9, 0.1, 20), (v.InitR, v.TargetR, v.Tinit, v.Tfinal, v.DeltaT, v.Beta1, v.Beta2, v.OrthRegWeight, v.TotalStep!.Value));
        var d = Assert.IsType<DeltaLoraConfig>(Built(Parse("finetuning_type: delta_lora", "delta_lora_update_ratio: 1.5", "delta_lora_start_steps: 7", "use_rslora: true")));
        Assert.Equal((1.5, 7, true), (d.UpdateRatio, d.StartSteps, d.Lora.UseRsLora));
        var ve = Assert.IsType<PeftSharp.Tuners.Vera.VeraConfig>(Built(Parse("finetuning_type: vera", "vera_rank: 32", "vera_d_initial: 0.5", "vera_projection_prng_key: 9")));
        Assert.Equal((32, 0.5, 9L), (ve.R, ve.DInitial, ve.ProjectionPrngKey));
        Assert.False(Parse("finetuning_type: lora_fa", "lora_fa_optimizer: false").RecipeKeys.Bool("lora_fa_optimizer", true));
        Assert.True(Parse("finetuning_type: lora_fa").RecipeKeys.Bool("lora_fa_optimizer", true));
        var l = Assert.IsType<PeftSharp.Tuners.Lora.LoraConfig>(Built(Parse("use_dora: true", "use_rslora: true")));
        Assert.True(l.UseDora && l.UseRsLora);
        Assert.Contains("adalora_orth_reg_weight", Assert.Throws<PeftConfigException>(() => TrainConfig.Parse("model_name_or_path: m\ndataset: d\nadalora_orth_reg_weigth: 1\n", "x.yaml")).Message);
    }

    [Theory]
    [InlineData("finetuning_type: lora", "use_rslora: false", "vera_rank: 4", "'vera_rank' applies to finetuning_type vera, not 'lora'")]
    [InlineData("finetuning_type: vera", "vera_rank: 4", "use_dora: true", "'use_dora' applies to finetuning_type lora, not 'vera'")]
    [InlineData("finetuning_type: adalora", "adalora_init_r: 4", "delta_lora_start_steps: 1", "'delta_lora_start_steps' applies to finetuning_type delta_lora, not 'adalora'")]
    [InlineData("finetuning_type: full", "lora_rank: 4", "lora_fa_optimizer: true", "'lora_fa_optimizer' applies to finetuning_type lora_fa, not 'full'")]
    [InlineData("finetuning_type: lora_fa", "lora_rank: 4", "use_dora: true", "'use_dora' applies to finetuning_type lora, not 'lora_fa'")]
    [InlineData("finetuning_type: vera", "lora_rank: 16", "vera_d_initial: 0.1", "lora_rank does not apply to finetuning_type vera; its rank is vera_rank")]
    [InlineData("finetuning_type: vera", "lora_alpha: 16", "vera_d_initial: 0.1", "lora_alpha does not apply to finetuning_type vera")]
    [InlineData("finetuning_type: adalora", "lora_rank: 16", "adalora_init_r: 8", "its ranks are adalora_init_r")]
    [InlineData("finetuning_type: delta_lora", "lora_dropout: 0.1", "delta_lora_start_steps: 1", "delta_lora needs lora_dropout 0")]
    [InlineData("finetuning_type: delta_lora", "bf16: true", "delta_lora_start_steps: 1", "bf16 cannot be used with finetuning_type delta_lora")]
    [InlineData("finetuning_type: vera", "quantization_bit: 4", "vera_rank: 8", "quantization_bit supports finetuning_type lora | lora_fa, not 'vera'")]
    [InlineData("finetuning_type: lora_fa", "loraplus_lr_ratio: 16", "lora_fa_optimizer: true", "loraplus_lr_ratio cannot be combined with the LoRA-FA optimizer")]
    [InlineData("finetuning_type: lora_fa", "optim: adamw_8bit", "lora_rank: 4", "optim 'adamw_8bit' cannot be combined with the LoRA-FA optimizer")]
    [InlineData("finetuning_type: lora_fa", "adam_epsilon: 1.0e-8", "lora_rank: 4", "adam_epsilon does not apply to the LoRA-FA optimizer")]
    [InlineData("finetuning_type: vera", "vera_rank: 0", "vera_d_initial: 0.1", "vera_rank must be > 0; found 0")]
    [InlineData("finetuning_type: delta_lora", "delta_lora_start_steps: -1", "lora_rank: 4", "delta_lora_start_steps must be >= 0; found -1")]
    [InlineData("finetuning_type: adalora", "adalora_init_r: 4", "adalora_target_r: 8", "adalora_target_r (8) must not exceed adalora_init_r (4)")]
    [InlineData("finetuning_type: adalora", "adalora_beta1: 1.5", "adalora_delta_t: 1", "adalora_beta1 and adalora_beta2 must be in (0, 1)")]
    [InlineData("finetuning_type: adalora", "adalora_orth_reg_weight: 0", "adalora_delta_t: 1", "adalora_orth_reg_weight must be > 0")]
    [InlineData("finetuning_type: adalora", "adalora_tinit: 5", "adalora_total_step: 5", "adalora_tinit (5) must be below adalora_total_step - adalora_tfinal")]
    [InlineData("finetuning_type: adalora", "adalora_delta_t: x", "adalora_tinit: 1", "'adalora_delta_t' is 'x'; expected an integer")]
    [InlineData("finetuning_type: lora", "use_dora: maybe", "lora_rank: 4", "'use_dora' is 'maybe'; expected true or false")]
    public void Wrong_keys_and_values_are_refused_with_the_key_named(string a, string b, string c, string expected)
    {
        var message = Error(a, b, c);
        Assert.Contains(expected, message);
        Assert.StartsWith("run.yaml: ", message);
    }

    [Fact]
    public void Unknown_finetuning_type_lists_the_variants()
    {
        var message = Error("finetuning_type: dora");
        Assert.Contains("lora_fa, delta_lora, vera, adalora", message);
    }

    /// <summary>Alpaca rows of a counting task for the byte-level test tokenizer.</summary>
    internal static string CountingData(string dir, int rows = 16)
    {
        var path = Path.Combine(dir, "count.jsonl");
        File.WriteAllLines(path, Enumerable.Range(0, rows).Select(i => $"{{\"instruction\":\"count {i}\",\"output\":\"{i + 1} {i + 2} {i + 3}\"}}"));
        return path;
    }

    static string Yaml(string model, string data, string outDir, string methodKeys, string extra) => $"""
        model_name_or_path: {model}
        {methodKeys}
        lora_target: q_proj,v_proj
        dataset: {data}
        template: empty
        cutoff_len: 48
        learning_rate: 5.0e-3
        max_steps: 6
        per_device_train_batch_size: 4
        logging_steps: 1
        seed: 7
        output_dir: {outDir}
        {extra}
        """;

    static List<StepRecord> Run(string yaml, int? stopAfter = null)
    {
        var config = TrainConfig.Parse(yaml, "run.yaml");
        using var setup = TrainSetup.FromConfig(config);
        var steps = new List<StepRecord>();
        using var cts = new CancellationTokenSource();
        using var trainer = new Trainer(setup.Target, config.Training, setup.Train, setup.Eval);
        trainer.StepCompleted += s => { steps.Add(s); if (s.Step == stopAfter) cts.Cancel(); };
        try { trainer.Train(cts.Token); } catch (OperationCanceledException) when (stopAfter is not null) { }
        return steps;
    }

    // Resume after step 4 of 6: LoRA-FA's optimizer state, AdaLoRA's importance averages + rank pattern and Delta-LoRA's
    // snapshot come back from the checkpoint, so steps 5 and 6 and the saved adapter equal the uninterrupted run's.
    [Theory]
    [InlineData("finetuning_type: lora_fa\nlora_rank: 4", 0.0)]
    [InlineData("finetuning_type: adalora\nadalora_init_r: 6\nadalora_target_r: 2\nadalora_tinit: 1\nadalora_tfinal: 2", 0.0)]
    // W is rebuilt from the telescoping identity rather than saved: equal up to float32 rounding.
    [InlineData("finetuning_type: delta_lora\nlora_rank: 4\ndelta_lora_start_steps: 2", 1e-5)]
    public void Resumed_variant_run_continues_the_uninterrupted_one(string methodKeys, double tolerance)
    {
        var model = TinyTokenizer.ModelWithTokenizer("llama-tiny");
        var dir = TestPaths.TempDir();
        var data = CountingData(dir);
        string dirA = Path.Combine(dir, "a"), dirB = Path.Combine(dir, "b");
        var straight = Run(Yaml(model, data, dirA, methodKeys, ""));
        Assert.Equal(4, Run(Yaml(model, data, dirB, methodKeys, "save_steps: 4"), stopAfter: 4).Count);
        Assert.True(File.Exists(Path.Combine(dirB, "checkpoint-4", "optimizer.safetensors")));
        var resumed = Run(Yaml(model, data, dirB, methodKeys, "save_steps: 4\nresume_from_checkpoint: last"));
        Assert.Equal(new[] { 5, 6 }, resumed.Select(s => s.Step));
        for (int i = 0; i < 2; i++)
        {
            Assert.True(Math.Abs(straight[4 + i].Loss - resumed[i].Loss) <= tolerance * straight[4 + i].Loss, $"step {5 + i}: {resumed[i].Loss} vs {straight[4 + i].Loss}");
            Assert.True(Math.Abs(straight[4 + i].GradNorm - resumed[i].GradNorm) <= tolerance * straight[4 + i].GradNorm + 1e-12, $"grad norm at step {5 + i}");
        }
        Assert.Equal(File.ReadAllText(Path.Combine(dirA, AdapterFiles.ConfigFile)), File.ReadAllText(Path.Combine(dirB, AdapterFiles.ConfigFile)));
        using var a = SafetensorsFile.Open(Path.Combine(dirA, AdapterFiles.WeightsFile));
        using var b = SafetensorsFile.Open(Path.Combine(dirB, AdapterFiles.WeightsFile));
        Assert.Equal(a.Keys.OrderBy(k => k), b.Keys.OrderBy(k => k));
        foreach (var k in a.Keys)
        {
            using var x = a.Load(k); using var y = b.Load(k);
            Assert.Equal(x.shape, y.shape);
            if (x.numel() > 0) FixtureAssert.Close(x, y, null, tolerance, k); // AdaLoRA can prune a module to rank 0
        }
    }

    // training/llama-tiny-lora/lorafa through the real Trainer (finetuning_type lora_fa's hooks): peft's
    // create_lorafa_optimizer run with HF's schedule, clipping and weight decay, projection in float32 (meta.json's probe).
    [Fact]
    public void Lora_fa_target_reproduces_the_peft_trajectory_through_the_trainer()
    {
        double[] fp32Losses = { 6.171204566955566, 6.171204566955566, 6.148591995239258, 6.103455543518066, 6.06602144241333, 6.036229610443115, 6.013978004455566, 5.999185562133789 };
        using var model = AutoModel.FromPretrained(TestPaths.Model("llama-tiny"));
        var peft = PeftModel.FromPretrained(model, TestPaths.Data("training", "llama-tiny-lora", "initial"), isTrainable: true);
        var target = AdapterTargets.WithMethodHooks(AdapterTargets.Peft(peft), "lora_fa");
        Assert.All(peft.named_parameters().Where(p => p.name.Contains("lora_A")), p => Assert.False(p.parameter.requires_grad));
        var args = new TrainingArguments
        {
            OutputDir = TestPaths.TempDir(), LearningRate = 1e-3, WeightDecay = 0.01, WarmupSteps = 2, MaxSteps = 8, MaxGradNorm = 1.0,
            LrSchedulerType = "linear", PerDeviceTrainBatchSize = 4, Shuffle = false, LoggingSteps = 1,
        };
        var steps = new List<StepRecord>();
        using var trainer = new Trainer(target, args, TrainingFixtureTests.Batch());
        Assert.Equal("lora_fa", Assert.Single(trainer.ParamGroups).Name);
        trainer.StepCompleted += steps.Add;
        trainer.Train();
        Assert.Equal(8, steps.Count);
        for (int k = 0; k < 8; k++)
            Assert.True(Math.Abs(steps[k].Loss - fp32Losses[k]) <= 1e-5 * fp32Losses[k], $"step {k}: {steps[k].Loss} vs {fp32Losses[k]}");
    }

    [Fact]
    public void Adalora_run_adds_the_orthogonality_term_and_prunes_to_the_target_budget()
    {
        var model = TinyTokenizer.ModelWithTokenizer("llama-tiny");
        var dir = TestPaths.TempDir();
        var config = TrainConfig.Parse(Yaml(model, CountingData(dir), Path.Combine(dir, "out"),
            "finetuning_type: adalora\nadalora_init_r: 6\nadalora_target_r: 2\nadalora_tinit: 1\nadalora_tfinal: 2", ""), "run.yaml");
        using var setup = TrainSetup.FromConfig(config);
        var peft = (PeftModel)setup.Target.Root;
        var adalora = Assert.IsType<AdaLoraConfig>(peft.ActiveConfig);
        Assert.Equal(6, adalora.TotalStep);
        Assert.IsType<RankAllocator>(Assert.Single(setup.Target.Callbacks));
        using (var loss = tensor(1.0f))
        using (var withTerm = setup.Target.LossTerm!(loss))
        using (var penalty = AdaLoraRegularizer.OrthogonalPenalty(peft))
            Assert.Equal(1.0 + 0.5 * penalty.item<float>(), withTerm.item<float>(), 5);
        using (var trainer = new Trainer(setup.Target, config.Training, setup.Train)) trainer.Train();
        // target budget = target_r × adapted matrices (q_proj, v_proj of every layer).
        int budget = 2 * peft.AdapterLayers().Count();
        var saved = Assert.IsType<AdaLoraConfig>(PeftMethods.LoadConfig(Path.Combine(dir, "out")));
        Assert.Equal(budget, saved.RankPattern!.Values.Sum(k => k.Count(x => x)));
        var reloaded = PeftModel.FromPretrained(AutoModel.FromPretrained(setup.ModelDir), Path.Combine(dir, "out"));
        Assert.Equal(budget, reloaded.AdapterLayers().Sum(l => ((AdaLoraLinear)l.Layer).RankOf("default")));
    }

    [Fact]
    public void Delta_lora_target_updates_the_base_weight_and_plain_lora_fa_uses_adamw()
    {
        var model = TinyTokenizer.ModelWithTokenizer("llama-tiny");
        var dir = TestPaths.TempDir();
        var data = CountingData(dir);
        var config = TrainConfig.Parse(Yaml(model, data, Path.Combine(dir, "d"), "finetuning_type: delta_lora\nlora_rank: 4\ndelta_lora_start_steps: 0", ""), "run.yaml");
        using (var setup = TrainSetup.FromConfig(config))
        {
            Assert.IsType<DeltaLoraUpdater>(Assert.Single(setup.Target.Callbacks));
            var layer = (DeltaLoraLinear)((PeftModel)setup.Target.Root).AdapterLayers().First().Layer;
            var w0 = layer.BaseWeight.detach().clone();
            using (var trainer = new Trainer(setup.Target, config.Training, setup.Train)) trainer.Train();
            Assert.True((layer.BaseWeight - w0).abs().max().item<float>() > 1e-5, "the trainer ran Delta-LoRA's W update");
        }
        var plain = TrainConfig.Parse(Yaml(model, data, Path.Combine(dir, "fa"), "finetuning_type: lora_fa\nlora_fa_optimizer: false\nlora_rank: 4", "loraplus_lr_ratio: 4"), "run.yaml");
        using (var setup = TrainSetup.FromConfig(plain))
        {
            Assert.Null(setup.Target.CreateOptimizer);
            var peft = (PeftModel)setup.Target.Root;
            var a0 = peft.named_parameters().First(p => p.name.Contains("lora_A")).parameter.detach().clone();
            using (var trainer = new Trainer(setup.Target, plain.Training, setup.Train))
            {
                Assert.Contains(trainer.ParamGroups, g => g.Name == "groupB" && g.Params.Count > 0);
                Assert.DoesNotContain(trainer.ParamGroups.SelectMany(g => g.Params), p => p.Name.Contains("lora_A"));
                trainer.Train();
            }
            Assert.True(a0.equal(peft.named_parameters().First(p => p.name.Contains("lora_A")).parameter).all().item<bool>(), "A stayed frozen");
        }
    }

    [Theory]
    [InlineData("lora", "vera", "is a VERA adapter; finetuning_type 'lora' cannot continue it (use vera)")]
    [InlineData("delta_lora", "lora_qv", "is a LORA adapter; finetuning_type 'delta_lora' cannot continue it (use lora or lora_fa)")]
    [InlineData("adalora", "adalora", "continuing an AdaLoRA adapter is not supported")]
    public void Adapter_name_or_path_must_be_of_the_finetuning_type(string type, string adapter, string expected)
    {
        var model = TinyTokenizer.ModelWithTokenizer("llama-tiny");
        var dir = TestPaths.TempDir();
        var config = TrainConfig.Parse(Yaml(model, CountingData(dir), Path.Combine(dir, "out"), $"finetuning_type: {type}",
            $"adapter_name_or_path: {TestPaths.Data("adapters", "llama-tiny", adapter)}"), "run.yaml");
        Assert.Contains(expected, Assert.Throws<PeftConfigException>(() => TrainSetup.FromConfig(config)).Message);
    }

    [Fact]
    public void Lora_fa_continues_a_saved_lora_adapter_with_A_frozen()
    {
        var model = TinyTokenizer.ModelWithTokenizer("llama-tiny");
        var dir = TestPaths.TempDir();
        var config = TrainConfig.Parse(Yaml(model, CountingData(dir), Path.Combine(dir, "out"), "finetuning_type: lora_fa",
            $"adapter_name_or_path: {TestPaths.Data("adapters", "llama-tiny", "lora_qv")}"), "run.yaml");
        using var setup = TrainSetup.FromConfig(config);
        var peft = (PeftModel)setup.Target.Root;
        Assert.All(peft.named_parameters().Where(p => p.name.Contains("lora_")), p => Assert.Equal(p.name.Contains("lora_B"), p.parameter.requires_grad));
        Assert.NotNull(setup.Target.CreateOptimizer);
    }

    // bf16 stores the frozen lora_A (and the base) in bfloat16 (the LoRA-FA paper's point); the optimizer reads A from its
    // layer at each step and projects in float32, so the run follows the float32 one up to bf16 rounding.
    [Fact]
    public void Lora_fa_optimizer_trains_with_bf16_base_and_the_adapter_reloads()
    {
        var model = TinyTokenizer.ModelWithTokenizer("llama-tiny");
        var dir = TestPaths.TempDir();
        var data = CountingData(dir);
        var fp32 = Run(Yaml(model, data, Path.Combine(dir, "fp32"), "finetuning_type: lora_fa\nlora_rank: 4", ""));
        var outDir = Path.Combine(dir, "bf16");
        var bf16 = Run(Yaml(model, data, outDir, "finetuning_type: lora_fa\nlora_rank: 4", "bf16: true"));
        Assert.Equal(6, bf16.Count);
        for (int k = 0; k < 6; k++)
            Assert.True(Math.Abs(bf16[k].Loss - fp32[k].Loss) < 0.02 * fp32[k].Loss, $"step {k + 1}: bf16 {bf16[k].Loss:F4} vs float32 {fp32[k].Loss:F4}");
        var peft = PeftModel.FromPretrained(AutoModel.FromPretrained(model), outDir);
        Assert.IsType<PeftSharp.Tuners.Lora.LoraConfig>(peft.ActiveConfig);
    }
}
