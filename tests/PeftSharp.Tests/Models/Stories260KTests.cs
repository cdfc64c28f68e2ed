using System.Text.Json;
using System.Text.Json.Nodes;
using PeftSharp.Models;
using PeftSharp.Tests.Cli;
using PeftSharp.Tuners;
using static TorchSharp.torch;

namespace PeftSharp.Tests.Models;

/// <summary>
/// A real trained Llama (llama2.c's TinyStories 260K, see TestData/PROVENANCE.md): its documented greedy continuation
/// and tokenization, a LoRA SFT run that must lower held-out loss, and merged = unmerged.
/// </summary>
public class Stories260KTests
{
    public static string ModelDir => TestPaths.Data("real", "stories260K");

    // From the model's documentation (llama2.c), for BOS + "Once upon a time".
    public static readonly int[] Prompt = [1, 403, 407, 261, 378];
    public static readonly int[] GreedyNew =
    [
        432, 383, 286, 261, 376, 298, 315, 421, 395, 317, 426, 338, 401, 396, 267, 337, 410, 408, 419, 292,
        411, 322, 265, 282, 295, 433, 426, 385, 328, 432, 358, 394, 261, 370, 432, 352, 266, 268, 388, 426,
    ];

    static int[] Ints(JsonElement e) => e.EnumerateArray().Select(x => x.GetInt32()).ToArray();

    [Fact]
    public void Tokenize_once_upon_a_time_matches_the_documented_ids()
    {
        var (code, stdout, stderr) = CliRunner.Run("tokenize", "--model", ModelDir, "--text", "Once upon a time");
        Assert.True(code == 0, stderr);
        Assert.Equal(string.Join(' ', Prompt[1..]), stdout.Trim().Split('\n')[0].Trim());
        // The post-processor prepends BOS (tokenizer_config's add_bos_token).
        (code, stdout, stderr) = CliRunner.Run("tokenize", "--model", ModelDir, "--text", "Once upon a time", "--special");
        Assert.True(code == 0, stderr);
        Assert.Equal(string.Join(' ', Prompt), stdout.Trim().Split('\n')[0].Trim());
    }

    [Fact]
    public void Generate_reproduces_the_documented_greedy_story()
    {
        var (code, stdout, stderr) = CliRunner.Run("generate", "--model", ModelDir, "--prompt", "Once upon a time",
            "--max-new-tokens", GreedyNew.Length.ToString(), "--json");
        Assert.True(code == 0, stderr);
        var row = Assert.Single(JsonDocument.Parse(stdout).RootElement.GetProperty("rows").EnumerateArray());
        Assert.Equal(Prompt, Ints(row.GetProperty("prompt_ids")));
        Assert.Equal(GreedyNew, Ints(row.GetProperty("new_ids")));
        Assert.StartsWith(", there was a little girl named Lily. She loved to play outside in the park. One day, she saw a big, red ball.",
            row.GetProperty("text").GetString());
    }

    /// <summary>Alpaca rows teaching a fixed answer style the base model never produces.</summary>
    public static void WriteAlpaca(string path, IEnumerable<string> names) =>
        File.WriteAllLines(path, names.Select(n => new JsonObject
        {
            ["instruction"] = $"Who is {n}?",
            ["input"] = "",
            ["output"] = $"{n} is a little dog. {n} likes to play with a ball.",
        }.ToJsonString()));

    static readonly string[] TrainNames = ["Tom", "Sam", "Max", "Ben", "Sue", "Tim", "Ann", "Joe", "Mia", "Lily", "Bob", "Kim"];
    static readonly string[] HeldOutNames = ["Amy", "Dan", "Zoe", "Jack"];

    static double EvalLoss(string data, string? adapter)
    {
        var args = new List<string> { "eval", "--model", ModelDir, "--dataset", data, "--template", "alpaca", "--json" };
        if (adapter is not null) args.AddRange(["--adapter", adapter]);
        var (code, stdout, stderr) = CliRunner.Run(args.ToArray());
        Assert.True(code == 0, stderr);
        return JsonNode.Parse(stdout.Trim().Split('\n')[^1])!["loss"]!.GetValue<double>();
    }

    [Fact]
    public void Lora_sft_lowers_held_out_loss_and_the_merged_model_equals_the_adapter()
    {
        var dir = TestPaths.TempDir();
        WriteAlpaca(Path.Combine(dir, "train.jsonl"), TrainNames);
        var heldOut = Path.Combine(dir, "heldout.jsonl");
        WriteAlpaca(heldOut, HeldOutNames);
        var outDir = Path.Combine(dir, "adapter");
        File.WriteAllText(Path.Combine(dir, "run.yaml"), $"""
            model_name_or_path: {ModelDir}
            stage: sft
            finetuning_type: lora
            lora_target: all
            lora_rank: 8
            dataset: train.jsonl
            template: alpaca
            cutoff_len: 128
            max_steps: 20
            per_device_train_batch_size: 4
            learning_rate: 5.0e-3
            logging_steps: 10
            output_dir: {outDir}
            """);
        var (code, trainOut, stderr) = CliRunner.Run("train", Path.Combine(dir, "run.yaml"), "--json");
        Assert.True(code == 0, stderr);

        // lora_target: all is saved as LLaMA-Factory hands it to peft: the short names of the linear layers.
        var targets = JsonNode.Parse(File.ReadAllText(Path.Combine(outDir, "adapter_config.json")))!["target_modules"]!.AsArray().Select(n => n!.GetValue<string>()).Order();
        Assert.Equal(["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"], targets);

        double before = EvalLoss(heldOut, null), after = EvalLoss(heldOut, outDir);
        Assert.True(after < 0.6 * before, $"held-out loss {before:F3} -> {after:F3}");

        var merged = Path.Combine(dir, "merged");
        (code, trainOut, stderr) = CliRunner.Run("merge", "--model", ModelDir, "--adapter", outDir, "--out", merged);
        Assert.True(code == 0, stderr);
        // The tokenizer and generation files travel with the weights; the run's logs, plots and state do not.
        string[] modelFiles = ["config.json", "generation_config.json", "model.safetensors", "special_tokens_map.json", "tokenizer.json", "tokenizer_config.json"];
        Assert.Equal(modelFiles, Directory.GetFiles(merged).Select(Path.GetFileName).Order());
        (code, _, stderr) = CliRunner.Run("generate", "--model", merged, "--prompt", "Who is Amy?", "--max-new-tokens", "4");
        Assert.True(code == 0, stderr);
        var quantized = Path.Combine(dir, "nf4");
        (code, _, stderr) = CliRunner.Run("quantize", "--model", merged, "--out", quantized);
        Assert.True(code == 0, stderr);
        Assert.Equal(modelFiles, Directory.GetFiles(quantized).Select(Path.GetFileName).Order());

        using var scope = NewDisposeScope();
        var ids = tensor(Prompt.Concat(GreedyNew).Select(i => (long)i).ToArray()).unsqueeze(0);
        using var peft = PeftModel.FromPretrained(AutoModel.FromPretrained(ModelDir), outDir);
        using var mergedModel = AutoModel.FromPretrained(merged);
        var unmergedLogits = peft.Forward(new ModelInputs { InputIds = ids }).Logits;
        var mergedLogits = mergedModel.Forward(ids).Logits;
        Assert.True(unmergedLogits.allclose(mergedLogits, rtol: 0, atol: 1e-4), $"max |diff| {(unmergedLogits - mergedLogits).abs().max().item<float>()}");
        using var baseModel = AutoModel.FromPretrained(ModelDir);
        Assert.False(baseModel.Forward(ids).Logits.allclose(mergedLogits, rtol: 0, atol: 1e-3), "the adapter changed nothing");
    }
}
