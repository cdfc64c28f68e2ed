using System.Text.Json.Nodes;
using PeftSharp.Tests.Tokenization;
using PeftSharp.Training;

namespace PeftSharp.Tests.Cli;

public class TrainCommandTests
{
    static (int Code, string Out, string Err) Peft(params string[] args)
    {
        var o = new StringWriter(); var e = new StringWriter();
        int code = PeftSharp.Cli.Program.Run(args, o, e);
        return (code, o.ToString(), e.ToString());
    }

    [Fact]
    public void Unknown_yaml_key_lists_the_valid_ones()
    {
        var e = Assert.Throws<PeftConfigException>(() => TrainConfig.Parse("model_name_or_path: m\ndataset: d.jsonl\nlearning_rte: 1e-4\nlora_rnak: 4\n", "x.yaml"));
        Assert.Contains("x.yaml: unknown keys 'learning_rte' (line 3; did you mean 'learning_rate'?); 'lora_rnak' (line 4; did you mean 'lora_rank'?)", e.Message);
        var bad = Assert.Throws<PeftConfigException>(() => TrainConfig.Parse("model_name_or_path: m\ndataset: d\nlr_scheduler_type: wavy\n", "x.yaml"));
        Assert.Contains("wavy", bad.Message);
        var c = TrainConfig.Parse("model_name_or_path: m\ndataset: d\nlearning_rate: 1.0e-4\nlora_target: [q_proj, v_proj]\nbf16: true\nshuffle: false\n", "x.yaml");
        Assert.Equal(1e-4, c.Training.LearningRate);
        Assert.Equal("q_proj,v_proj", c.LoraTarget);
        Assert.True(c.Training.Bf16);
        Assert.False(c.Training.Shuffle);
    }

    [Fact]
    public void Train_writes_log_plot_and_model_then_eval_reads_it()
    {
        var model = TinyTokenizer.ModelWithTokenizer("llama-tiny");
        var dir = TestPaths.TempDir();
        var data = Path.Combine(dir, "data.jsonl");
        File.WriteAllLines(data, Enumerable.Range(0, 12).Select(i => $"{{\"instruction\":\"count {i}\",\"output\":\"{i} {i + 1} {i + 2}\"}}"));
        var outDir = Path.Combine(dir, "out");
        var yaml = Path.Combine(dir, "run.yaml");
        File.WriteAllText(yaml, $"""
            model_name_or_path: {model}
            finetuning_type: full
            dataset: data.jsonl
            template: alpaca
            cutoff_len: 256
            val_size: 2
            max_steps: 4
            per_device_train_batch_size: 4
            learning_rate: 1.0e-3
            logging_steps: 2
            output_dir: {outDir}
            """);
        var (code, stdout, err) = Peft("train", yaml, "--json");
        Assert.True(code == 0, err);
        var summary = JsonNode.Parse(stdout.Trim().Split('\n')[^1])!;
        Assert.Equal(4, summary["steps"]!.GetValue<int>());
        Assert.True(summary["eval_loss"]!.GetValue<double>() > 0);
        var log = File.ReadAllLines(Path.Combine(outDir, "trainer_log.jsonl")).Select(l => JsonNode.Parse(l)!).ToList();
        var steps = log.Where(l => l["loss"] is not null).ToList();
        Assert.Equal(new[] { 2, 4 }, steps.Select(l => l["step"]!.GetValue<int>()));
        Assert.All(steps, l => Assert.NotNull(l["grad_norm"]));
        Assert.Contains(log, l => l["eval_loss"] is not null);
        Assert.True(new FileInfo(Path.Combine(outDir, "loss.png")).Length > 1000);
        Assert.True(File.Exists(Path.Combine(outDir, "model.safetensors")));

        var (ecode, eout, eerr) = Peft("eval", "--model", outDir, "--dataset", data, "--template", "alpaca", "--json");
        Assert.True(ecode == 1, "the trained folder has no tokenizer, so text data must be refused");
        Assert.Contains("tokenizer", eerr);
        var (ecode2, eout2, eerr2) = Peft("eval", "--model", model, "--dataset", data, "--template", "alpaca", "--json");
        Assert.True(ecode2 == 0, eerr2);
        Assert.Equal(12, JsonNode.Parse(eout2)!["rows"]!.GetValue<int>());
    }

    [Fact]
    public void Lora_run_with_checkpointing_and_bf16_saves_a_peft_adapter_and_checkpoints()
    {
        var model = TinyTokenizer.ModelWithTokenizer("llama-tiny");
        var dir = TestPaths.TempDir();
        var data = Path.Combine(dir, "chat.jsonl");
        File.WriteAllLines(data, Enumerable.Range(0, 8).Select(i =>
            $"{{\"messages\":[{{\"role\":\"user\",\"content\":\"say {i}\"}},{{\"role\":\"assistant\",\"content\":\"{i} {i}\"}}]}}"));
        var outDir = Path.Combine(dir, "out");
        var yaml = Path.Combine(dir, "lora.yaml");
        File.WriteAllText(yaml, $"""
            model_name_or_path: {model}
            finetuning_type: lora
            lora_rank: 4
            lora_target: q_proj,v_proj
            dataset: chat.jsonl
            template: chatml
            max_steps: 4
            per_device_train_batch_size: 4
            learning_rate: 1.0e-3
            logging_steps: 1
            save_steps: 2
            gradient_checkpointing: true
            bf16: true
            output_dir: {outDir}
            """);
        var (code, stdout, err) = Peft("train", yaml, "--json");
        Assert.True(code == 0, err);
        var summary = JsonNode.Parse(stdout.Trim().Split('\n')[^1])!;
        // q_proj: A [4,64] + B [64,4]; v_proj (2 kv heads × 16): A [4,64] + B [32,4]; two layers.
        Assert.Equal(2 * (4 * 64 + 64 * 4 + 4 * 64 + 32 * 4), summary["trainable_params"]!.GetValue<long>());
        Assert.True(File.Exists(Path.Combine(outDir, "adapter_model.safetensors")));
        Assert.Contains("\"r\": 4", File.ReadAllText(Path.Combine(outDir, "adapter_config.json")));
        Assert.True(Directory.Exists(Path.Combine(outDir, "checkpoint-2")));
        Assert.True(File.Exists(Path.Combine(outDir, "checkpoint-4", "optimizer.safetensors")));
        var losses = File.ReadAllLines(Path.Combine(outDir, "trainer_log.jsonl")).Select(l => JsonNode.Parse(l)!["loss"]!.GetValue<double>()).ToList();
        Assert.Equal(4, losses.Count);
        Assert.All(losses, l => Assert.True(double.IsFinite(l) && l > 0));

        var (ecode, eout, eerr) = Peft("eval", "--model", model, "--adapter", outDir, "--dataset", data, "--template", "chatml", "--json");
        Assert.True(ecode == 0, eerr);
        Assert.True(JsonNode.Parse(eout)!["loss"]!.GetValue<double>() > 0);
    }
}
