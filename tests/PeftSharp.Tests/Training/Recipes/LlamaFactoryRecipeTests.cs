using System.Text.Json.Nodes;
using PeftSharp.Tests.Cli;
using PeftSharp.Tests.Tokenization;
using PeftSharp.Tokenization;
using PeftSharp.Training;
using PeftSharp.Training.Data;
using PeftSharp.Training.Recipes;
using TorchSharp;

namespace PeftSharp.Tests.Training.Recipes;

/// <summary>LLaMA-Factory's own example YAMLs (samples/llamafactory, verbatim) and bad variants of them.</summary>
public class LlamaFactoryRecipeTests
{
    static readonly Lazy<string> Model = new(() => TinyTokenizer.ModelWithTokenizer("llama-tiny"));

    static (int Code, string Out, string Err, string OutDir) Train(string sample, params string[] extra)
    {
        var outDir = Path.Combine(TestPaths.TempDir(), "out");
        var args = new List<string> { "train", TestPaths.RepoFile($"samples/llamafactory/{sample}"),
            $"model_name_or_path={Model.Value}", $"output_dir={outDir}", $"dataset_dir={TestPaths.RepoFile("samples/llamafactory/data")}", "max_steps=2" };
        args.AddRange(extra);
        var (code, o, e) = CliRunner.Run(args.ToArray());
        return (code, o, e, outDir);
    }

    [Theory]
    [InlineData("qwen3_lora_sft.yaml")]
    [InlineData("qwen3_full_sft.yaml")]
    [InlineData("qwen3_lora_sft_otfq.yaml")]
    [InlineData("qwen3_lora_sft_bnb_npu.yaml")]
    [InlineData("llama3_lora_sft_gptq.yaml")]
    [InlineData("qwen3_lora_pretrain.yaml")]
    public void Example_yaml_trains_with_only_paths_and_steps_changed(string sample)
    {
        var (code, _, err, outDir) = Train(sample);
        Assert.True(code == 0, err);
        // One warning line per accepted key that does nothing here, naming it.
        Assert.Contains("ignoring 'trust_remote_code'", err);
        Assert.Contains("ignoring 'ddp_timeout'", err);
        Assert.Single(err.Split('\n'), l => l.Contains("'preprocessing_num_workers'"));
        Assert.DoesNotContain("'report_to'", err); // report_to: none is already off
        var state = JsonNode.Parse(File.ReadAllText(Path.Combine(outDir, "trainer_state.json")))!;
        Assert.Equal(2, state["global_step"]!.GetValue<int>());
        Assert.Contains(state["log_history"]!.AsArray(), e => e!["train_runtime"] is not null);
        var results = JsonNode.Parse(File.ReadAllText(Path.Combine(outDir, "all_results.json")))!;
        Assert.True(double.IsFinite(results["train_loss"]!.GetValue<double>()));
        Assert.True(File.Exists(Path.Combine(outDir, "train_results.json")));
        Assert.True(File.Exists(Path.Combine(outDir, "training_loss.png")), "plot_loss: true draws training_loss.png");
        var first = JsonNode.Parse(File.ReadAllLines(Path.Combine(outDir, "trainer_log.jsonl"))[0])!;
        Assert.True(first["current_steps"]!.GetValue<int>() >= 1);
        Assert.NotNull(first["remaining_time"]);
        // save_steps: 500 with 2 steps: HF still saves the final checkpoint.
        Assert.True(File.Exists(Path.Combine(outDir, "checkpoint-2", "trainer_state.json")));
    }

    [Fact]
    public void Rerun_resumes_from_the_last_checkpoint_and_says_so()
    {
        // A run that was killed after checkpoint-2 of 3 (its checkpoint-3 never finished).
        var (code, _, err, outDir) = Train("qwen3_lora_sft.yaml", "max_samples=4", "max_steps=3", "save_steps=1");
        Assert.True(code == 0, err);
        Directory.Delete(Path.Combine(outDir, "checkpoint-3"), true);
        var (code2, stdout, err2) = CliRunner.Run("train", TestPaths.RepoFile("samples/llamafactory/qwen3_lora_sft.yaml"), $"model_name_or_path={Model.Value}",
            $"output_dir={outDir}", $"dataset_dir={TestPaths.RepoFile("samples/llamafactory/data")}", "max_steps=3", "save_steps=1", "max_samples=4", "overwrite_output_dir=false");
        Assert.True(code2 == 0, err2);
        Assert.Contains($"resuming from {Path.Combine(outDir, "checkpoint-2")}: output_dir holds checkpoints of an earlier run", err2);
        Assert.Contains($"resumed from {Path.Combine(outDir, "checkpoint-2")} at step 2", stdout);
        Assert.Equal(3, JsonNode.Parse(File.ReadAllText(Path.Combine(outDir, "trainer_state.json")))!["global_step"]!.GetValue<int>());
    }

    [Theory]
    [InlineData("learning_rte=1e-4", "unknown key 'learning_rte' (override learning_rte=; did you mean 'learning_rate'?)")]
    [InlineData("use_galore=true", "'use_galore: true' (override use_galore=) is not supported")]
    [InlineData("stage=dpo", "stage 'dpo' (override stage=) is not supported: preference and reward training are not available")]
    [InlineData("dataset=identity,nope", "qwen3_lora_sft.yaml: dataset 'nope' is not defined in")]
    [InlineData("template=qwen9", "template 'qwen9' is not known")]
    [InlineData("mix_strategy=zip", "'mix_strategy' is 'zip'; expected one of concat, interleave_under")]
    [InlineData("lr_scheduler_kwargs={\"min_lr\": 1e-6}", "'min_lr' is not an argument of cosine")]
    [InlineData("pure_bf16=true", "'pure_bf16: true' (override pure_bf16=) is not supported: this precision mode")]
    [InlineData("quantization_method=hqq", "quantization_method 'hqq' (override quantization_method=) is not supported")]
    [InlineData("use_llama_pro=true", "use_llama_pro (override use_llama_pro=) trains the expanded layers with finetuning_type freeze")]
    public void Bad_versions_are_one_clear_error(string change, string expected)
    {
        var (code, _, err, _) = Train("qwen3_lora_sft.yaml", change);
        Assert.NotEqual(0, code);
        Assert.Contains(expected, err);
        Assert.Single(err.Split('\n', StringSplitOptions.RemoveEmptyEntries), l => l.StartsWith("error:"));
    }

    [Fact]
    public void Unknown_keys_in_the_file_are_listed_together_with_lines()
    {
        var yaml = File.ReadAllText(TestPaths.RepoFile("samples/llamafactory/qwen3_lora_sft.yaml")).Replace("lora_rank: 8", "lora_rnak: 8").Replace("cutoff_len:", "cutof_len:");
        var e = Assert.Throws<PeftConfigException>(() => TrainConfig.Parse(yaml, "qwen3_lora_sft.yaml"));
        Assert.Contains("qwen3_lora_sft.yaml: unknown keys 'lora_rnak' (line 10; did you mean 'lora_rank'?); 'cutof_len' (line 16; did you mean 'cutoff_len'?)", e.Message);
    }

    [Fact]
    public void Dataset_info_errors_name_the_file_and_dataset()
    {
        var dir = TestPaths.TempDir();
        File.WriteAllText(Path.Combine(dir, "dataset_info.json"), """{"prefs": {"file_name": "p.json", "ranking": true}, "hub": {"hf_hub_url": "x/y"}}""");
        var ranking = Assert.Throws<PeftConfigException>(() => DatasetRegistry.Resolve("prefs", dir, p => p));
        Assert.Contains("dataset 'prefs', 'ranking'", ranking.Message);
        Assert.Contains("hub and script datasets need a download", Assert.Throws<PeftConfigException>(() => DatasetRegistry.Resolve("hub", dir, p => p)).Message);
        File.WriteAllText(Path.Combine(dir, "dataset_info.json"), "{\"a\": {\"file_name\": \"a.json\",}");
        Assert.Contains("dataset_info.json", Assert.Throws<PeftFormatException>(() => DatasetRegistry.Resolve("a", dir, p => p)).Message);
    }

    [Fact]
    public void Infer_seqlen_shortens_prompt_and_answer_as_llamafactory()
    {
        Assert.Equal((5, 10), DatasetBuilder.InferSeqlen(5, 10, 100));
        Assert.Equal((90, 10), DatasetBuilder.InferSeqlen(500, 10, 100));   // short answer: the prompt gives way
        Assert.Equal((10, 90), DatasetBuilder.InferSeqlen(10, 500, 100));   // short prompt: the answer gives way
        Assert.Equal((34, 66), DatasetBuilder.InferSeqlen(100, 200, 100));  // both long: proportional
    }

    static HfTokenizer Tok()
    {
        var dir = TestPaths.TempDir();
        TinyTokenizer.WriteTo(dir);
        return HfTokenizer.FromFolder(dir);
    }

    static string Text(string template, ChatMessage[] turns, string? system = null, string? tools = null) =>
        LlamaFactoryTemplate.Find(template)!.Render(turns, system, tools, "<s>", "</s>");

    static readonly ChatMessage[] TwoTurns = [new("user", "hi"), new("assistant", "yo"), new("user", "again"), new("assistant", "ok")];

    [Fact]
    public void Templates_render_as_llamafactory()
    {
        Assert.Equal("<|im_start|>system\nbe brief<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\nyo<|im_end|>\n" +
            "<|im_start|>user\nagain<|im_end|>\n<|im_start|>assistant\nok<|im_end|>\n", Text("qwen3_nothink", TwoTurns, "be brief"));
        Assert.StartsWith("<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n", Text("qwen", TwoTurns));
        Assert.Equal("<s><|start_header_id|>system<|end_header_id|>\n\nS<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nhi<|eot_id|>" +
            "<|start_header_id|>assistant<|end_header_id|>\n\nyo<|eot_id|>", Text("llama3", TwoTurns[..2], "S"));
        Assert.Equal("<s>[INST] <<SYS>>\nS\n<</SYS>>\n\nhi [/INST]yo</s><s>[INST] again [/INST]ok</s>", Text("llama2", TwoTurns, "S"));
        Assert.Equal("<s>[INST] S\n\nhi[/INST] yo</s>[INST] again[/INST] ok</s>", Text("mistral", TwoTurns, "S"));
        Assert.Equal("Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n" +
            "### Instruction:\nhi\n\n### Response:\nyo</s>\n\n", Text("alpaca", TwoTurns[..2]));
        Assert.Equal("System: S</s>\nHuman: hi</s>\nAssistant:yo</s>\n", Text("default", TwoTurns[..2], "S"));
        Assert.Equal("hiyoagainok", Text("empty", TwoTurns));
        Assert.Equal("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\nyo<|im_end|>\n", Text("chatml", TwoTurns[..2]));
    }

    [Fact]
    public void Tool_calls_render_in_the_templates_tool_format()
    {
        var tools = """[{"name": "get_weather", "description": "Weather", "parameters": {"type": "object", "properties": {"city": {"type": "string", "description": "City"}}, "required": ["city"]}}]""";
        ChatMessage[] turns = [new("user", "Paris?"), new("function", """{"name": "get_weather", "arguments": {"city": "Paris"}}"""), new("observation", "18"), new("assistant", "18 C")];
        var qwen = Text("qwen3_nothink", turns, null, tools);
        Assert.Contains("<tools>\n{\"type\": \"function\", \"function\": {\"name\": \"get_weather\", \"description\": \"Weather\", \"parameters\": {\"type\": \"object\", \"properties\": {\"city\": {\"type\": \"string\", \"description\": \"City\"}}, \"required\": [\"city\"]}}}\n</tools>", qwen);
        Assert.Contains("<|im_start|>assistant\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call><|im_end|>\n", qwen);
        Assert.Contains("<|im_start|>user\n<tool_response>\n18\n</tool_response><|im_end|>\n<|im_start|>assistant\n18 C<|im_end|>\n", qwen);
        var plain = Text("default", turns, null, tools);
        Assert.Contains("> Tool Name: get_weather\nTool Description: Weather\nTool Args:\n  - city (string, required): City\n\n", plain);
        Assert.Contains("Action: get_weather\nAction Input: {\"city\": \"Paris\"}</s>", plain);
        Assert.Contains("\"name\": \"get_weather\", \"parameters\": {\"city\": \"Paris\"}", Text("llama3", turns, null, tools));
    }

    [Fact]
    public void Qwen3_adds_the_empty_thought_to_answers_and_qwen3_nothink_does_not()
    {
        var tok = Tok();
        ChatMessage[] turns = [new("user", "hi"), new("assistant", "yo")];
        var think = LlamaFactoryTemplate.Find("qwen3")!;
        var thought = tok.Encode("<think>\n\n</think>\n\n", false);
        var (_, target) = Assert.Single(think.EncodeMultiturn(tok, turns, null, null));
        Assert.Equal(thought.Concat(tok.Encode("yo<|im_end|>\n", false)), target);
        var (source, target2) = Assert.Single(think.With(null, null, enableThinking: false, false).EncodeMultiturn(tok, turns, null, null));
        Assert.EndsWith(string.Join(",", thought), string.Join(",", source));
        Assert.Equal(tok.Encode("yo<|im_end|>\n", false), target2);
        var (_, plain) = Assert.Single(LlamaFactoryTemplate.Find("qwen3_nothink")!.EncodeMultiturn(tok, turns, null, null));
        Assert.Equal(tok.Encode("yo<|im_end|>\n", false), plain);
    }

    [Fact]
    public void Datasets_mix_as_llamafactory_and_max_samples_cuts_each()
    {
        var tok = Tok();
        var dir = TestPaths.TempDir();
        File.WriteAllText(Path.Combine(dir, "a.jsonl"), string.Join("\n", Enumerable.Range(0, 3).Select(i => $"{{\"instruction\":\"a{i}\",\"output\":\"x\"}}")));
        File.WriteAllText(Path.Combine(dir, "b.jsonl"), string.Join("\n", Enumerable.Range(0, 5).Select(i => $"{{\"instruction\":\"b{i}\",\"output\":\"y\"}}")));
        var sources = DatasetRegistry.Resolve("a.jsonl,b.jsonl", dir, p => Path.Combine(dir, p));
        int Count(string mix, int? max = null) => DatasetBuilder.Load(sources, null, tok, new DataOptions { MixStrategy = mix, MaxSamples = max }).Train.Count;
        Assert.Equal(8, Count("concat"));
        Assert.Equal(6, Count("interleave_under"));  // alternate until the first runs out: 3 + 3
        Assert.Equal(10, Count("interleave_over"));  // until every one ran out once: 5 + 5 (a repeats)
        Assert.Equal(4, Count("concat", 2));
    }

    [Fact]
    public void Freeze_trains_only_the_selected_layers()
    {
        var (code, _, err, outDir) = Train("qwen3_full_sft.yaml", "finetuning_type=freeze", "freeze_trainable_layers=1", "freeze_trainable_modules=mlp", "freeze_extra_modules=norm", "--json");
        Assert.True(code == 0, err);
        var cfg = TrainConfig.Parse("model_name_or_path: m\ndataset: d\nfinetuning_type: freeze\nfreeze_trainable_modules: mlp,self_attn\n");
        Assert.Equal(["mlp", "self_attn"], cfg.Recipe.Freeze.TrainableModules);
        Assert.True(File.Exists(Path.Combine(outDir, "model.safetensors")), "freeze tuning saves the whole model");
        using var model = PeftSharp.Models.AutoModel.FromPretrained(Model.Value);
        int layers = model.Config.NumHiddenLayers;
        var target = FreezeTuning.Target(model, new FreezeSettings { TrainableLayers = 1, TrainableModules = ["mlp"], ExtraModules = ["norm"] });
        var trainable = model.named_parameters().Where(p => p.parameter.requires_grad).Select(p => p.name).ToList();
        Assert.NotEmpty(trainable);
        // As LLaMA-Factory, an extra module matches by substring: "norm" also selects every layer's norms.
        Assert.All(trainable, n => Assert.True(n.Contains($".{layers - 1}.mlp") || n.Contains("norm"), n));
        Assert.Contains(trainable, n => n.Contains($".{layers - 1}.mlp"));
        Assert.DoesNotContain(trainable, n => n.Contains(".0.mlp") && layers > 1);
        Assert.Contains("not found; choose from", Assert.Throws<PeftConfigException>(() => FreezeTuning.Target(model, new FreezeSettings { TrainableModules = ["ffn"] })).Message);
    }

    [Fact]
    public void Additional_target_trains_and_saves_those_modules_in_full_as_peft_modules_to_save()
    {
        var (code, _, err, outDir) = Train("qwen3_lora_sft.yaml", "additional_target=lm_head");
        Assert.True(code == 0, err);
        var config = JsonNode.Parse(File.ReadAllText(Path.Combine(outDir, "adapter_config.json")))!;
        Assert.Equal(["lm_head"], config["modules_to_save"]!.AsArray().Select(n => (string)n!).ToArray());
        using var file = PeftSharp.IO.SafetensorsFile.Open(Path.Combine(outDir, "adapter_model.safetensors"));
        var keys = file.Keys.ToList();
        Assert.Contains(keys, k => k.Contains("lm_head.modules_to_save") || k.Contains("lm_head.weight"));
        // A type that has no modules_to_save refuses it, naming the types that take it.
        var e = Assert.Throws<PeftConfigException>(() => TrainConfig.Parse("model_name_or_path: m\ndataset: d\nfinetuning_type: prompt_tuning\nadditional_target: lm_head\n", "p.yaml"));
        Assert.Contains("'additional_target' applies to finetuning_type", e.Message);
        Assert.Contains("lora", e.Message);
    }

    [Fact]
    public void Llama_pro_trains_every_expanded_layer()
    {
        using var model = PeftSharp.Models.AutoModel.FromPretrained(Model.Value);
        int layers = model.Config.NumHiddenLayers;
        FreezeTuning.Target(model, new FreezeSettings { TrainableLayers = layers, UseLlamaPro = true });
        var trained = model.named_parameters().Where(p => p.parameter.requires_grad).Select(p => p.name).ToList();
        // layers / n = 1: every layer is an expanded one.
        Assert.All(Enumerable.Range(0, layers), i => Assert.Contains(trained, n => n.Contains($".{i}.")));
        var e = Assert.Throws<PeftConfigException>(() => FreezeTuning.Target(model, new FreezeSettings { TrainableLayers = layers + 1, UseLlamaPro = true, Source = "pro.yaml" }));
        Assert.StartsWith($"pro.yaml: use_llama_pro needs freeze_trainable_layers to divide the model's {layers} layers", e.Message);
        var cfg = TrainConfig.Parse("model_name_or_path: m\ndataset: d\nfinetuning_type: freeze\nfreeze_trainable_layers: 8\nuse_llama_pro: true\nfp16: true\n" +
            "quantization_method: bitsandbytes\n", "pro.yaml");
        Assert.True(cfg.Recipe.Freeze.UseLlamaPro);
        Assert.Contains(cfg.Warnings, w => w.StartsWith("pro.yaml: ignoring 'fp16' (line 6): float16 mixed precision is a GPU mode; this run trains in float32"));
    }

    [Fact]
    public void Text_files_and_bad_dataset_info_entries()
    {
        var dir = TestPaths.TempDir();
        File.WriteAllText(Path.Combine(dir, "wiki.txt"), "first line\n\nsecond line\r\n");
        File.WriteAllText(Path.Combine(dir, "d.csv"), "a,b\n");
        File.WriteAllText(Path.Combine(dir, "dataset_info.json"), """
            {"wiki": {"file_name": "wiki.txt", "columns": {"prompt": "text"}}, "odd": "x.json", "n": {"file_name": "wiki.txt", "num_samples": 1.5}}
            """);
        var records = DatasetReader.Read(Path.Combine(dir, "wiki.txt"));
        Assert.Equal(["first line", "second line"], records.Select(r => r.Json["text"]!.GetValue<string>()));
        Assert.Equal([1, 3], records.Select(r => r.Line));
        Assert.Contains(".csv datasets are not read here; convert it to JSON lines", Assert.Throws<PeftFormatException>(() => DatasetReader.Read(Path.Combine(dir, "d.csv"))).Message);
        var wiki = Assert.Single(DatasetRegistry.Resolve("wiki", dir, p => p));
        Assert.Equal("text", wiki.Attr.Prompt);
        Assert.Contains("dataset 'odd' must be an object", Assert.Throws<PeftFormatException>(() => DatasetRegistry.Resolve("odd", dir, p => p)).Message);
        Assert.Contains("dataset 'n', 'num_samples' must be a positive integer (found 1.5)", Assert.Throws<PeftFormatException>(() => DatasetRegistry.Resolve("n", dir, p => p)).Message);
    }

    [Fact]
    public void Malformed_recipe_and_records_name_file_and_line()
    {
        var yaml = File.ReadAllText(TestPaths.RepoFile("samples/llamafactory/qwen3_lora_sft.yaml")).Replace("cutoff_len: 2048", "cutoff_len: [2048");
        Assert.StartsWith("x.yaml:16: not valid YAML", Assert.Throws<PeftFormatException>(() => TrainConfig.Parse(yaml, "x.yaml")).Message);
        var path = Path.Combine(TestPaths.TempDir(), "a.json");
        File.WriteAllText(path, "[\n  {\"instruction\": \"a\", \"output\": \"b\"},\n  {\"instruction\": \"c\",\n   \"output\": 5}\n]\n");
        var records = DatasetReader.Read(path);
        var e = Assert.Throws<PeftFormatException>(() => DatasetFormats.ToConversation(records[1], DatasetFormat.Alpaca, new DatasetAttr()));
        Assert.Contains($"{path}:3: field 'output' must be a string (found Number)", e.Message);
    }

    [Fact]
    public void Openai_tool_calls_that_are_not_objects_are_a_clear_error()
    {
        var dir = TestPaths.TempDir();
        var path = Path.Combine(dir, "t.jsonl");
        File.WriteAllText(path, """{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": null, "tool_calls": [3]}]}""" + "\n");
        var r = Assert.Single(DatasetReader.Read(path));
        var e = Assert.Throws<PeftFormatException>(() => DatasetFormats.ToConversation(r, DatasetFormat.ShareGpt, DatasetAttr.PlainFile));
        Assert.Contains($"{path}:1: message 2: each tool_calls item must be an object with a 'function' object", e.Message);
    }

    [Fact]
    public void Cosine_with_min_lr_ends_at_the_floor()
    {
        var kwargs = new Dictionary<string, double> { ["min_lr"] = 1e-5 };
        Assert.Equal(0.1, LrSchedule.Factor("cosine_with_min_lr", 10, 0, 10, kwargs, 1e-4), 12);
        Assert.Equal(1.0, LrSchedule.Factor("cosine_with_min_lr", 0, 0, 10, kwargs, 1e-4), 12);
        Assert.Equal(0.55, LrSchedule.Factor("cosine_with_min_lr", 5, 0, 10, new Dictionary<string, double> { ["min_lr_rate"] = 0.1 }, 1e-4), 12);
    }

    [Fact]
    public void Evaluation_strategies_track_the_best_checkpoint_and_write_eval_outputs()
    {
        var (code, _, err, outDir) = Train("qwen3_lora_sft.yaml", "val_size=2", "max_samples=6", "eval_strategy=steps", "eval_steps=1", "save_steps=1",
            "load_best_model_at_end=true", "metric_for_best_model=loss", "lr_scheduler_type=cosine_with_min_lr", "lr_scheduler_kwargs={min_lr_rate: 0.1}",
            "neftune_noise_alpha=5");
        Assert.True(code == 0, err);
        var state = JsonNode.Parse(File.ReadAllText(Path.Combine(outDir, "trainer_state.json")))!;
        var evals = state["log_history"]!.AsArray().Where(e => e!["eval_loss"] is not null).ToList();
        Assert.Equal(2, evals.Count);
        double best = evals.Min(e => e!["eval_loss"]!.GetValue<double>());
        Assert.Equal(best, state["best_metric"]!.GetValue<double>(), 12);
        Assert.EndsWith($"checkpoint-{state["best_global_step"]!.GetValue<int>()}", state["best_model_checkpoint"]!.GetValue<string>());
        var eval = JsonNode.Parse(File.ReadAllText(Path.Combine(outDir, "eval_results.json")))!;
        Assert.True(eval["eval_loss"]!.GetValue<double>() > 0);
        Assert.NotNull(JsonNode.Parse(File.ReadAllText(Path.Combine(outDir, "all_results.json")))!["eval_loss"]);
        Assert.True(File.Exists(Path.Combine(outDir, "training_eval_loss.png")));
        var bad = Assert.Throws<PeftConfigException>(() => TrainConfig.Parse("model_name_or_path: m\ndataset: d\nload_best_model_at_end: true\n", "b.yaml"));
        Assert.Contains("load_best_model_at_end needs an eval_strategy", bad.Message);
    }

    [Fact]
    public void Neftune_adds_bounded_noise_to_embeddings_only_in_training_mode()
    {
        using var model = PeftSharp.Models.AutoModel.FromPretrained(Model.Value);
        using var ids = TorchSharp.torch.tensor(new long[] { 1, 2, 3, 4 }, [1, 4]);
        using var clean = model.InputEmbeddings.call(ids);
        using (Neftune.Attach(model, 5.0))
        {
            model.train();
            using var noisy = model.InputEmbeddings.call(ids);
            double bound = 5.0 / Math.Sqrt(4 * clean.shape[2]);
            double maxDiff = (noisy - clean).abs().max().ToDouble();
            Assert.InRange(maxDiff, 1e-9, bound + 1e-6);
            model.eval();
            using var quiet = model.InputEmbeddings.call(ids);
            Assert.Equal(0.0, (quiet - clean).abs().max().ToDouble());
        }
        model.train();
        using var after = model.InputEmbeddings.call(ids);
        Assert.Equal(0.0, (after - clean).abs().max().ToDouble());
    }

    [Fact]
    public void Readme_key_table_lists_every_key()
    {
        var readme = File.ReadAllText(TestPaths.RepoFile("README.md"));
        var section = readme[readme.IndexOf("## Coming from LLaMA-Factory", StringComparison.Ordinal)..];
        Assert.All(RecipeKeys.All, k => Assert.Contains($"`{k.Name}`", section));
    }
}
