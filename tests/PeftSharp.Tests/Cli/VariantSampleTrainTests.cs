using System.Text.Json.Nodes;
using PeftSharp.Models;
using PeftSharp.Tests.Tokenization;
using PeftSharp.Tests.Tuners.Prompt;
using PeftSharp.Tuners;
using PeftSharp.Tuners.AdaLora;
using PeftSharp.Tuners.DeltaLora;
using PeftSharp.Tuners.Lora;
using PeftSharp.Tuners.Vera;
using static TorchSharp.torch;

namespace PeftSharp.Tests.Cli;

/// <summary>
/// Every LoRA-variant sample YAML runs through `peft train` (on llama-tiny with the byte-level test tokenizer and a
/// short schedule instead of the quickstart base's 30 epochs); its loss goes down and the adapter folder it writes
/// loads with PeftModel.FromPretrained and changes the model's logits.
/// </summary>
public class VariantSampleTrainTests
{
    [Theory]
    [InlineData("dora_sft", "LORA", null)]
    [InlineData("rslora_sft", "LORA", null)]
    [InlineData("lora_fa_sft", "LORA", null)]
    [InlineData("delta_lora_sft", "DELTA_LORA", null)]
    // VeRA and AdaLoRA start slower (AdaLoRA's singular values start at 0): 12 steps need a higher lr on this tiny random model.
    [InlineData("vera_sft", "VERA", "1.0e-1")]
    [InlineData("adalora_sft", "ADALORA", "2.0e-2")]
    public void Sample_yaml_trains_through_peft_train_and_its_adapter_loads(string sample, string peftType, string? lr)
    {
        var model = TinyTokenizer.ModelWithTokenizer("llama-tiny");
        var dir = TestPaths.TempDir();
        var outDir = Path.Combine(dir, "out");
        var yaml = File.ReadAllText(PromptTrainerTests.RepoFile($"samples/{sample}.yaml"))
            .Replace("quickstart-output/base", model)
            .Replace("samples/data/reverse_sft.jsonl", PromptTrainerTests.RepoFile("samples/data/reverse_sft.jsonl"))
            .Replace("num_train_epochs: 30", "max_steps: 12")
            .Replace("logging_steps: 10", "logging_steps: 1")
            .Replace("save_steps: 100", "save_steps: 0")
            .Replace("delta_lora_start_steps: 50", "delta_lora_start_steps: 3")
            .Replace("adalora_tinit: 20", "adalora_tinit: 2")
            .Replace("adalora_tfinal: 40", "adalora_tfinal: 4")
            .Replace("adalora_delta_t: 5", "adalora_delta_t: 2")
            .Replace($"output_dir: samples-output/{sample}", $"output_dir: {outDir}");
        if (lr is not null) yaml = System.Text.RegularExpressions.Regex.Replace(yaml, @"learning_rate: \S+", $"learning_rate: {lr}");
        Assert.Contains("max_steps: 12", yaml);
        var path = Path.Combine(dir, $"{sample}.yaml");
        File.WriteAllText(path, yaml);

        var (code, stdout, err) = CliRunner.Run("train", path, "--json");
        Assert.True(code == 0, err);
        Assert.Equal(12, JsonNode.Parse(stdout.Trim().Split('\n')[^1])!["steps"]!.GetValue<int>());
        var losses = File.ReadAllLines(Path.Combine(outDir, "trainer_log.jsonl")).Select(l => JsonNode.Parse(l)!)
            .Where(n => n["loss"] is not null).Select(n => n["loss"]!.GetValue<double>()).ToList();
        Assert.Equal(12, losses.Count);
        double first = losses.Take(3).Average(), last = losses.TakeLast(3).Average();
        Assert.True(last < 0.9 * first, $"{sample}: loss {first:F3} -> {last:F3} ({string.Join(", ", losses.Select(l => l.ToString("F3")))})");

        var config = PeftMethods.LoadConfig(outDir);
        Assert.Equal(peftType, config.PeftType);
        switch (sample)
        {
            case "dora_sft": Assert.True(((LoraConfig)config).UseDora); break;
            case "rslora_sft": Assert.True(((LoraConfig)config).UseRsLora); break;
            case "delta_lora_sft": Assert.Equal(3, ((DeltaLoraConfig)config).StartSteps); break;
            case "vera_sft": Assert.Equal(256, ((VeraConfig)config).R); break;
            case "adalora_sft": Assert.NotNull(((AdaLoraConfig)config).RankPattern); break;
        }
        using var _ = no_grad();
        using var scope = NewDisposeScope();
        var ids = tensor(new long[] { 85, 121, 35, 104, 106, 107, 64 }, new long[] { 1, 7 });
        var baseLogits = AutoModel.FromPretrained(model).Forward(new ModelInputs { InputIds = ids }).Logits;
        var peft = PeftModel.FromPretrained(AutoModel.FromPretrained(model), outDir);
        var adapted = peft.Forward(new ModelInputs { InputIds = ids }).Logits;
        Assert.True((adapted - baseLogits).abs().max().item<float>() > 1e-3, $"{sample}: the loaded adapter does not change the logits");
    }
}
