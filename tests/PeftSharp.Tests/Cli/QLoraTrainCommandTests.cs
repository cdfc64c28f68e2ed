using System.Text.Json.Nodes;
using PeftSharp.IO;
using PeftSharp.Tests.Tokenization;
using PeftSharp.Training;

namespace PeftSharp.Tests.Cli;

/// <summary>`peft train` with LLaMA-Factory's quantization keys and HF's optim names (QLoRA).</summary>
public class QLoraTrainCommandTests
{
    [Fact]
    public void Qlora_yaml_trains_a_lora_adapter_on_a_4bit_base_with_paged_8bit_adamw()
    {
        var model = TinyTokenizer.ModelWithTokenizer("llama-tiny");
        var dir = TestPaths.TempDir();
        var data = Path.Combine(dir, "data.jsonl");
        File.WriteAllLines(data, Enumerable.Range(0, 12).Select(i => $"{{\"instruction\":\"count {i}\",\"output\":\"{i} {i + 1} {i + 2}\"}}"));
        var outDir = Path.Combine(dir, "out");
        var yaml = Path.Combine(dir, "qlora.yaml");
        File.WriteAllText(yaml, $"""
            model_name_or_path: {model}
            finetuning_type: lora
            lora_rank: 64
            lora_target: all
            quantization_bit: 4
            quantization_type: nf4
            double_quantization: true
            optim: paged_adamw_8bit
            dataset: data.jsonl
            template: alpaca
            cutoff_len: 256
            max_steps: 6
            per_device_train_batch_size: 4
            learning_rate: 5.0e-3
            logging_steps: 1
            save_steps: 3
            gradient_checkpointing: true
            output_dir: {outDir}
            """);
        var o = new StringWriter(); var e = new StringWriter();
        int code = PeftSharp.Cli.Program.Run(new[] { "train", yaml, "--json" }, o, e);
        Assert.True(code == 0, e.ToString());
        var losses = File.ReadAllLines(Path.Combine(outDir, "trainer_log.jsonl")).Select(l => JsonNode.Parse(l)!)
            .Where(l => l["loss"] is not null).Select(l => l["loss"]!.GetValue<double>()).ToList();
        Assert.Equal(6, losses.Count);
        Assert.True(losses[^1] < losses[0], $"loss {losses[0]} -> {losses[^1]}");

        // A plain peft adapter (the base's 4-bit layers are not saved), loadable on the 4-bit base.
        using (var f = SafetensorsFile.Open(Path.Combine(outDir, "adapter_model.safetensors")))
        {
            Assert.Contains("base_model.model.model.layers.0.mlp.down_proj.lora_A.weight", f.Keys);
            Assert.DoesNotContain(f.Keys, k => k.Contains("absmax") || k.Contains("base_layer"));
        }
        // The checkpoint's optimizer file holds the 8-bit codes of the r=64 A matrices.
        var ckpt = Directory.GetDirectories(outDir, "checkpoint-*").OrderBy(d => d).First();
        using (var opt = SafetensorsFile.Open(Path.Combine(ckpt, "optimizer.safetensors")))
            Assert.Contains(opt.Keys, k => k.StartsWith("absmax1.", StringComparison.Ordinal));
    }

    [Fact]
    public void Quantization_and_optim_keys_are_parsed_and_checked()
    {
        var c = TrainConfig.Parse("model_name_or_path: m\ndataset: d\nquantization_bit: 4\nbf16: true\noptim: adamw_8bit\n", "q.yaml");
        Assert.NotNull(c.Quantization);
        Assert.Equal(("nf4", true, "bfloat16"), (c.Quantization!.Bnb4bitQuantType, c.Quantization.Bnb4bitUseDoubleQuant, c.Quantization.Bnb4bitComputeDType));
        Assert.Equal("adamw_8bit", c.Training.Optim);
        var fp4 = TrainConfig.Parse("model_name_or_path: m\ndataset: d\nquantization_bit: 4\nquantization_type: fp4\ndouble_quantization: false\n", "q.yaml");
        Assert.Equal(("fp4", false, "float32"), (fp4.Quantization!.Bnb4bitQuantType, fp4.Quantization.Bnb4bitUseDoubleQuant, fp4.Quantization.Bnb4bitComputeDType));
        Assert.Null(TrainConfig.Parse("model_name_or_path: m\ndataset: d\n", "q.yaml").Quantization);
        Assert.Contains("quantization_bit 8", Assert.Throws<PeftConfigException>(() => TrainConfig.Parse("model_name_or_path: m\ndataset: d\nquantization_bit: 8\n", "q.yaml")).Message);
        Assert.Contains("finetuning_type lora", Assert.Throws<PeftConfigException>(() => TrainConfig.Parse("model_name_or_path: m\ndataset: d\nfinetuning_type: full\nquantization_bit: 4\n", "q.yaml")).Message);
        Assert.Contains("adafactor", Assert.Throws<PeftConfigException>(() => TrainConfig.Parse("model_name_or_path: m\ndataset: d\noptim: adafactor\n", "q.yaml")).Message);
    }
}
