using PeftSharp.Models;
using PeftSharp.Training;
using PeftSharp.Training.Data;
using PeftSharp.Tuners;
using PeftSharp.Tuners.PromptLearning;
using static TorchSharp.torch;

namespace PeftSharp.Tests.Tuners.Prompt;

/// <summary>The prompt family through the Trainer and the `peft train` YAML (finetuning_type prompt_tuning ... llama_adapter).</summary>
public class PromptTrainerTests
{
    internal static string RepoFile(string relative) => TestPaths.RepoFile(relative);

    static List<StepRecord> Train(TrainingTarget target, TrainingArguments args, IReadOnlyList<TrainExample> data) =>
        PeftSharp.Tests.Training.TrainerTests.Run(target, args, data);

    [Theory]
    [InlineData("prompt_tuning")]
    [InlineData("p_tuning")]
    [InlineData("prefix_tuning")]
    [InlineData("llama_adapter")]
    public void Trainer_trains_a_causal_prompt_method_and_saves_a_loadable_peft_adapter(string type)
    {
        using var scope = NewDisposeScope();
        manual_seed(5);
        var model = AutoModel.FromPretrained(TestPaths.Model("llama-tiny"));
        var settings = new PromptFamilySettings { NumVirtualTokens = 4, EncoderHiddenSize = 32, PrefixProjection = true, AdapterLen = 4 };
        var target = AdapterTargets.Peft(PeftModel.Create(model, PromptFamily.Config(type, settings, "CAUSAL_LM", 2)));
        var ids = new[] { 5, 17, 33, 5, 17, 33, 5, 17 };
        var data = Enumerable.Range(0, 4).Select(_ => new TrainExample { InputIds = ids, Labels = ids }).ToList();
        var dir = TestPaths.TempDir();
        var args = new TrainingArguments { OutputDir = dir, LearningRate = 1e-1, LrSchedulerType = "constant", MaxSteps = 15, PerDeviceTrainBatchSize = 4, LoggingSteps = 1, Seed = 1 };
        var steps = Train(target, args, data);
        Assert.True(steps[^1].Loss < 0.7 * steps[0].Loss, $"{type}: loss {steps[0].Loss:F3} -> {steps[^1].Loss:F3}");
        target.Save(dir);
        var reloaded = PeftModel.FromPretrained(AutoModel.FromPretrained(TestPaths.Model("llama-tiny")), dir);
        using var _ = no_grad();
        ((PeftModel)target.Root).eval();
        var input = new ModelInputs { InputIds = tensor(ids.Select(i => (long)i).ToArray(), new long[] { 1, ids.Length }) };
        FixtureAssert.Close(reloaded.Forward(input).Logits, ((PeftModel)target.Root).Forward(input).Logits, null, 1e-4, $"{type} reload");
    }

    [Fact]
    public void P_tuning_v2_bert_sample_yaml_trains_through_train_setup()
    {
        using var scope = NewDisposeScope();
        var yaml = File.ReadAllText(RepoFile("samples/p_tuning_v2_bert_classification.yaml"))
            .Replace("tests/PeftSharp.Tests/TestData/models/bert-tiny-cls", TestPaths.Model("bert-tiny-cls"))
            .Replace("samples/data/bert_cls_tokenized.jsonl", RepoFile("samples/data/bert_cls_tokenized.jsonl"))
            .Replace("num_train_epochs: 20", "max_steps: 15")
            .Replace("output_dir: samples-output/p_tuning_v2_bert_classification", $"output_dir: {TestPaths.TempDir()}");
        var config = TrainConfig.Parse(yaml, "p_tuning_v2_bert_classification.yaml");
        Assert.Equal(8, config.RecipeKeys.Int("num_virtual_tokens", 20));
        using var setup = TrainSetup.FromConfig(config);
        var peft = (PeftModel)setup.Target.Root;
        Assert.Equal(new[] { "classifier", "score", "classifier", "score" }, ((PeftSharp.Tuners.PrefixTuning.PrefixTuningConfig)peft.ActiveConfig).ModulesToSave);
        var steps = Train(setup.Target, config.Training, setup.Train);
        Assert.True(steps[^1].Loss < steps[0].Loss, $"loss {steps[0].Loss:F3} -> {steps[^1].Loss:F3}");
    }

    [Fact]
    public void Every_prompt_family_sample_yaml_parses()
    {
        foreach (var name in new[] { "prompt_tuning", "p_tuning", "prefix_tuning", "llama_adapter", "p_tuning_v2_bert_classification" })
        {
            var c = TrainConfig.Load(RepoFile($"samples/{name}.yaml"));
            Assert.Contains(c.FinetuningType, PromptFamily.FinetuningTypes);
        }
        Assert.Contains("prompt_tuning, p_tuning, prefix_tuning", Assert.Throws<PeftConfigException>(() =>
            TrainConfig.Parse("model_name_or_path: x\ndataset: y\nfinetuning_type: oft\n")).Message);
    }
}
