using System.Text.Json.Nodes;
using PeftSharp.Inference;
using PeftSharp.Inference.Serving;
using PeftSharp.Tests.Serving;
using PeftSharp.Models;
using PeftSharp.Tests.Cli;
using PeftSharp.Tests.Inference;
using PeftSharp.Tests.Tokenization;
using PeftSharp.Tests.Training;
using PeftSharp.Tests.Tuners.Lora;
using PeftSharp.Training;
using PeftSharp.Tuners;
using PeftSharp.Tuners.IA3;
using static TorchSharp.torch;

namespace PeftSharp.Tests.Tuners.IA3;

/// <summary>
/// (IA)³ against peft 0.20.0's IA3 fixtures (llama, GPT-2 Conv1D, BERT classifier): logits, merge, greedy ids, saved
/// files; and everywhere a method works here: mixed batches, weighted combination, `peft train`, inspect, merge.
/// </summary>
public class IA3Tests
{
    public static TheoryData<string> Models => new() { "llama-tiny", "gpt2-tiny", "bert-tiny-cls" };

    static string Dir(string model) => TestPaths.Data("adapters", model, "ia3");

    static PeftModel Load(string model, string name = "default") => PeftModel.FromPretrained(AutoModel.FromPretrained(TestPaths.Model(model)), Dir(model), name);

    static ModelInputs Inputs(string model)
    {
        var (ids, mask) = LoraFixtureTests.Inputs(model);
        return new ModelInputs { InputIds = ids, AttentionMask = mask, TokenTypeIds = LoraFixtureTests.TokenTypes(model) };
    }

    [Theory]
    [MemberData(nameof(Models))]
    public void Adapter_reproduces_logits_and_merged_logits(string model)
    {
        using var scope = NewDisposeScope();
        using var _ = no_grad();
        var expected = Path.Combine(Dir(model), "expected.safetensors");
        var inputs = Inputs(model);
        var peft = Load(model);
        Assert.All(peft.AdapterLayers(), l => Assert.True(l.Layer is IA3Linear or ModulesToSaveWrapper, l.Name));

        var logits = peft.Forward(inputs).Logits;
        var mask = logits.dim() == 3 ? inputs.AttentionMask : null;
        FixtureAssert.Close(logits, LoraFixtureTests.Expected(expected, "logits"), mask, 1e-4, $"{model} ia3 logits");

        peft.Merge();
        FixtureAssert.Close(peft.Forward(inputs).Logits, logits, mask, 1e-4, "merged in place");
        peft.Unmerge();
        FixtureAssert.Close(peft.Forward(inputs).Logits, logits, mask, 1e-4, "unmerged (divided by l + 1e-8)");

        var merged = peft.MergeAndUnload();
        Assert.DoesNotContain(merged.named_modules(), m => m.module is IAdapterLayer);
        FixtureAssert.Close(merged.Forward(inputs).Logits, LoraFixtureTests.Expected(expected, "merged_logits"), mask, 1e-4, $"{model} ia3 merged_logits");
    }

    [Theory]
    [InlineData("llama-tiny")]
    [InlineData("gpt2-tiny")]
    public void Greedy_ids_match_peft_generate(string model)
    {
        using var scope = NewDisposeScope();
        var fx = GreedyFixture.FromFolder(Dir(model));
        var peft = Load(model);
        var gen = new TextGenerator(peft);
        Assert.Equal(fx.SingleOutput, gen.Generate(new[] { fx.SinglePrompt }, GreedyFixture.Options).Sequences[0]);
        Assert.Equal(fx.BatchOutput, gen.Generate(fx.BatchUnpadded, GreedyFixture.Options).Sequences);
    }

    [Theory]
    [MemberData(nameof(Models))]
    public void Saved_adapter_has_peft_keys_shapes_and_config(string model)
    {
        using var scope = NewDisposeScope();
        var peft = Load(model);
        var outDir = TestPaths.TempDir();
        peft.SaveAdapter(outDir);
        LoraFixtureTests.AssertSameAdapterFiles(Dir(model), outDir, compareValues: true);
    }

    [Fact]
    public void A_new_adapter_gets_peft_defaults_ones_and_the_feedforward_orientation()
    {
        using var scope = NewDisposeScope();
        var peft = PeftModel.Create(AutoModel.FromPretrained(TestPaths.Model("gpt2-tiny")), new IA3Config { TaskType = "CAUSAL_LM" });
        var c = Assert.IsType<IA3Config>(peft.ActiveConfig);
        Assert.Equal(new[] { "c_attn", "mlp.c_proj" }, c.TargetModules!.Items);
        Assert.True(c.FanInFanOut, "Conv1D targets force fan_in_fan_out");
        var layers = peft.AdapterLayers().ToDictionary(l => l.Name, l => (IA3Linear)l.Layer);
        Assert.Equal(4, layers.Count);
        // mlp.c_proj (256 -> 64) scales its input, c_attn (64 -> 192) its output; attn.c_proj is not a target.
        Assert.Equal(new long[] { 1, 256 }, layers["transformer.h.0.mlp.c_proj"].Vector("default").shape);
        Assert.Equal(new long[] { 192, 1 }, layers["transformer.h.0.attn.c_attn"].Vector("default").shape);
        Assert.All(layers.Values, l => Assert.True(l.Vector("default").eq(1).all().item<bool>() && l.Vector("default").requires_grad));
        Assert.Contains("subset of target_modules", Assert.Throws<PeftConfigException>(() =>
            PeftMethods.ParseConfig(JsonNode.Parse("""{"peft_type":"IA3","target_modules":["k_proj"],"feedforward_modules":["down_proj"]}""")!.AsObject(), "x.json")).Message);
    }

    [Fact]
    public void Mixed_batch_rows_match_single_adapter_and_base_runs()
    {
        using var scope = NewDisposeScope();
        using var _ = no_grad();
        var inputs = Inputs("llama-tiny");
        var peft = Load("llama-tiny");
        peft.LoadAdapter(Dir("llama-tiny"), "doubled");
        foreach (var (_, layer) in peft.AdapterLayers()) ((IA3Linear)layer).Vector("doubled").mul_(2);
        var first = peft.Forward(inputs).Logits;
        peft.SetAdapter("doubled");
        var second = peft.Forward(inputs).Logits;
        Tensor baseLogits;
        using (peft.DisableAdapters()) baseLogits = peft.Forward(inputs).Logits;

        var mixed = peft.Forward(inputs, new[] { "doubled", RowAdapters.Base, "default" }).Logits;
        var mask = inputs.AttentionMask!;
        FixtureAssert.Close(mixed[0], second[0], mask[0], 1e-5, "row 0 (doubled)");
        FixtureAssert.Close(mixed[1], baseLogits[1], mask[1], 1e-5, "row 1 (base)");
        FixtureAssert.Close(mixed[2], first[2], mask[2], 1e-5, "row 2 (default)");
        Assert.True((second - first).abs().max().item<float>() > 1e-2, "the two adapters differ");
    }

    [Fact]
    public void Weighted_combination_sums_the_weighted_vectors_as_peft()
    {
        using var scope = NewDisposeScope();
        var peft = Load("llama-tiny", "a");
        peft.LoadAdapter(Dir("llama-tiny"), "b");
        var layers = peft.AdapterLayers().Select(l => (IA3Linear)l.Layer).ToList();
        foreach (var l in layers) using (no_grad()) l.Vector("b").add_(0.5);
        peft.AddWeightedAdapter(new[] { "a", "b" }, new[] { 0.7, 0.3 }, "w", "linear");
        var c = Assert.IsType<IA3Config>(peft.Configs["w"]);
        Assert.Equal(new[] { "down_proj", "k_proj", "v_proj" }, c.TargetModules!.Items!.Order());
        foreach (var l in layers)
        {
            var want = l.Vector("a") * 0.7 + l.Vector("b") * 0.3;
            Assert.True(l.Vector("w").allclose(want, 1e-6, 1e-7), "w = 0.7 a + 0.3 b");
            Assert.False(l.Vector("w").requires_grad);
        }
        Assert.Contains("Adapter zzz does not exist", Assert.Throws<PeftSharpException>(() =>
            peft.AddWeightedAdapter(new[] { "a", "zzz" }, new[] { 0.5, 0.5 }, "x", "linear")).Message);
    }

    [Fact]
    public void Peft_merge_and_inspect_adapter_work_on_an_ia3_folder()
    {
        var outDir = TestPaths.TempDir();
        var (code, _, err) = CliRunner.Run("merge", "--model", TestPaths.Model("llama-tiny"), "--adapter", Dir("llama-tiny"), "--out", outDir);
        Assert.True(code == 0, err);
        using (var scope = NewDisposeScope())
        using (no_grad())
        {
            var inputs = Inputs("llama-tiny");
            using var merged = AutoModel.FromPretrained(outDir);
            FixtureAssert.Close(merged.Forward(inputs).Logits, LoraFixtureTests.Expected(Path.Combine(Dir("llama-tiny"), "expected.safetensors"), "merged_logits"),
                inputs.AttentionMask, 1e-4, "peft merge output");
        }

        var (code2, output, err2) = CliRunner.Run("inspect-adapter", Dir("llama-tiny"), "--model", TestPaths.Model("llama-tiny"), "--json");
        Assert.True(code2 == 0, err2);
        var json = JsonNode.Parse(output)!;
        Assert.Equal("IA3", json["method"]!.GetValue<string>());
        Assert.Equal("[down_proj]", json["settings"]!["feedforward_modules"]!.GetValue<string>());
        Assert.Equal(2 * (32 + 32 + 128), json["adapter_parameters"]!.GetValue<long>());
        var modules = json["modules"]!.AsArray();
        Assert.Equal(6, modules.Count);
        Assert.All(modules, m => Assert.Equal("ia3", m!["kind"]!.GetValue<string>()));
    }

    [Fact]
    public void Yaml_keys_build_the_adapter_and_a_run_trains_and_reloads()
    {
        var model = TinyTokenizer.ModelWithTokenizer("llama-tiny");
        var dir = TestPaths.TempDir();
        var outDir = Path.Combine(dir, "out");
        var yaml = $"""
            model_name_or_path: {model}
            finetuning_type: ia3
            ia3_target: [k_proj, v_proj, up_proj, down_proj]
            ia3_feedforward: down_proj
            dataset: {VariantTrainingTests.CountingData(dir)}
            template: empty
            cutoff_len: 48
            learning_rate: 5.0e-2
            max_steps: 12
            per_device_train_batch_size: 4
            logging_steps: 1
            seed: 7
            output_dir: {outDir}
            """;
        var config = TrainConfig.Parse(yaml, "ia3.yaml");
        using (var setup = TrainSetup.FromConfig(config))
        {
            var peft = (PeftModel)setup.Target.Root;
            var c = Assert.IsType<IA3Config>(peft.ActiveConfig);
            Assert.Equal(new[] { "k_proj", "v_proj", "up_proj", "down_proj" }, c.TargetModules!.Items);
            Assert.Equal(8, peft.AdapterLayers().Count());
            var steps = new List<StepRecord>();
            using var trainer = new Trainer(setup.Target, config.Training, setup.Train);
            trainer.StepCompleted += steps.Add;
            trainer.Train();
            Assert.True(steps[^1].Loss < steps[0].Loss, $"loss {steps[0].Loss} -> {steps[^1].Loss}");
        }
        var reloaded = PeftModel.FromPretrained(AutoModel.FromPretrained(model), outDir);
        Assert.Equal("IA3", reloaded.ActiveConfig.PeftType);
        Assert.Contains(reloaded.AdapterLayers(), l => ((IA3Linear)l.Layer).Vector("default").ne(1).any().item<bool>());

        Assert.Contains("lora_rank does not apply to finetuning_type ia3", Assert.Throws<PeftConfigException>(() =>
            TrainConfig.Parse("model_name_or_path: m\ndataset: d\nfinetuning_type: ia3\nlora_rank: 4\n", "x.yaml")).Message);
        Assert.Contains("'ia3_target' applies to finetuning_type ia3, not 'lora'", Assert.Throws<PeftConfigException>(() =>
            TrainConfig.Parse("model_name_or_path: m\ndataset: d\nia3_target: k_proj\n", "x.yaml")).Message);
        Assert.Contains("subset of target_modules", Assert.Throws<PeftConfigException>(() =>
            TrainConfig.Parse("model_name_or_path: m\ndataset: d\nfinetuning_type: ia3\nia3_target: k_proj\nia3_feedforward: down_proj\n", "x.yaml")).Message);
    }

    [Fact]
    public async Task Served_ia3_adapters_share_the_mixed_batch_and_each_request_gets_what_it_gets_alone()
    {
        var modelDir = TestPaths.Model("llama-tiny");
        var doubled = TestPaths.TempDir();
        using (var scope = NewDisposeScope())
        {
            var peft = Load("llama-tiny");
            foreach (var (_, layer) in peft.AdapterLayers()) using (no_grad()) ((IA3Linear)layer).Vector("default").mul_(2);
            peft.SaveAdapter(doubled);
        }
        using (var model = AutoModel.FromPretrained(modelDir))
        {
            var registry = new AdapterRegistry(model, 4);
            registry.Register("i1", AdapterRegistry.Prepare(Dir("llama-tiny")));
            registry.Register("i2", AdapterRegistry.Prepare(doubled));
            Assert.True(registry.IsBatched("i1") && registry.IsBatched("i2"), "IA3 adapters share the mixed batch");
        }

        var dirs = new Dictionary<string, string?> { ["i1"] = Dir("llama-tiny"), ["i2"] = doubled, ["llama-tiny"] = null };
        var rng = new Random(3);
        var jobs = Enumerable.Range(0, 6).Select(i => (Model: dirs.Keys.ElementAt(i % 3), Prompt: Enumerable.Range(0, 3 + rng.Next(8)).Select(_ => 3 + rng.Next(300)).ToArray(), Max: 3 + rng.Next(6))).ToList();
        await using var host = await ServingTestHost.StartAsync(new ServingOptions { MaxBatchSize = 8 }, modelDir, new[] { ("i1", dirs["i1"]!), ("i2", doubled) });
        var results = await Task.WhenAll(jobs.Select(j => host.PostAsync("/v1/completions", new JsonObject
        {
            ["model"] = j.Model, ["prompt"] = ServingTestHost.Json(j.Prompt), ["max_tokens"] = j.Max, ["temperature"] = 0, ["return_token_ids"] = true,
        })));
        for (int i = 0; i < jobs.Count; i++)
        {
            Assert.Equal(200, results[i].Status);
            using var model = AutoModel.FromPretrained(modelDir);
            ILanguageModel target = dirs[jobs[i].Model] is { } d ? PeftModel.FromPretrained(model, d) : model;
            var alone = new TextGenerator(target).Generate(new[] { jobs[i].Prompt }, new GenerationOptions { MaxNewTokens = jobs[i].Max }.WithGenerationConfig(modelDir)).NewTokens[0];
            Assert.Equal(alone, ServingTestHost.Ints(results[i].Body["choices"]![0]!["token_ids"]));
        }
    }
}
