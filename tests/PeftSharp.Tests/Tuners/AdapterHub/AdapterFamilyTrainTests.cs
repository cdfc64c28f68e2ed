using System.Text.Json.Nodes;
using PeftSharp.Models;
using PeftSharp.Tests.Tokenization;
using PeftSharp.Training;
using PeftSharp.Tuners;
using PeftSharp.Tuners.AdapterHub;

namespace PeftSharp.Tests.Tuners.AdapterHub;

/// <summary>peft train with the adapter family's finetuning types: learns, writes an AdapterHub folder that loads back.</summary>
// Seeds and trains through the global torch RNG: run outside the parallel phase so concurrent trainer tests stay deterministic.
[Collection(nameof(PeftSharp.Tests.Runtime.MemoryCollection))]
public class AdapterFamilyTrainTests
{
    [Theory]
    [InlineData("adapter", "adapter_config: double_seq_bn\nreduction_factor: 4\nleave_out: [0]", AdapterHubMethod.WeightsFile)]
    [InlineData("bitfit", "", "adapter_model.safetensors")]
    public void Peft_train_learns_and_saves_a_loadable_adapter(string type, string keys, string weightsFile)
    {
        var model = TinyTokenizer.ModelWithTokenizer("llama-tiny");
        var dir = TestPaths.TempDir();
        File.WriteAllLines(Path.Combine(dir, "data.jsonl"), Enumerable.Range(0, 8).Select(i => $"{{\"instruction\":\"count {i}\",\"output\":\"{i} {i + 1} {i + 2}\"}}"));
        var outDir = Path.Combine(dir, "out");
        var yaml = Path.Combine(dir, "run.yaml");
        File.WriteAllText(yaml, $"model_name_or_path: {model}\nfinetuning_type: {type}\n{keys}\ndataset: data.jsonl\ntemplate: alpaca\ncutoff_len: 256\n" +
            $"max_steps: 8\nper_device_train_batch_size: 4\nlearning_rate: 1.0e-2\nlogging_steps: 1\nshuffle: false\noutput_dir: {outDir}\n");
        var o = new StringWriter(); var e = new StringWriter();
        Assert.True(PeftSharp.Cli.Program.Run(new[] { "train", yaml, "--json" }, o, e) == 0, e.ToString());
        var losses = File.ReadAllLines(Path.Combine(outDir, "trainer_log.jsonl")).Select(l => JsonNode.Parse(l)!).Where(n => n["loss"] is not null).Select(n => n["loss"]!.GetValue<double>()).ToList();
        Assert.True(losses[^1] < losses[0] * 0.9, $"{type}: loss {losses[0]} -> {losses[^1]}");
        Assert.True(File.Exists(Path.Combine(outDir, weightsFile)));
        var peft = PeftModel.FromPretrained(AutoModel.FromPretrained(model), outDir);
        Assert.Equal(type == "adapter" ? AdapterHubConfig.Type : "BITFIT", peft.ActiveConfig.PeftType);
    }

    [Fact]
    public void Family_keys_are_refused_for_lora()
    {
        var ex = Assert.Throws<PeftConfigException>(() => TrainConfig.Parse("model_name_or_path: m\ndataset: d\nreduction_factor: 8\n", "x.yaml"));
        Assert.Contains("reduction_factor", ex.Message);
        var c = TrainConfig.Parse("model_name_or_path: m\ndataset: d\nfinetuning_type: mam\nprefix_length: 7\n", "x.yaml");
        var mam = Assert.IsType<AdapterHubConfig>(AdapterFamilyTypes.Create(c.FinetuningType, c.MethodKeys));
        Assert.Equal(7, Assert.IsType<HubPrefixConfig>(mam.Parts[0]).PrefixLength);
    }
}
