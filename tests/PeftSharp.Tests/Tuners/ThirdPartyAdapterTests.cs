using System.Text.Json.Nodes;
using PeftSharp.IO;
using PeftSharp.Models;
using PeftSharp.Tests.Cli;
using PeftSharp.Tests.Tuners.Lora;
using PeftSharp.Tuners;
using PeftSharp.Tuners.Lora;
using static TorchSharp.torch;

namespace PeftSharp.Tests.Tuners;

/// <summary>
/// Adapters as users bring them: the real gpt2-tigrinya-lora (peft 0.17.1) on a GPT-2-small-shaped model, and a
/// SEQ_CLS adapter on base folders saved as BertModel / BertForMaskedLM, whose head task_type builds.
/// </summary>
public class ThirdPartyAdapterTests
{
    static string Tigrinya => TestPaths.Data("real", "adapters", "gpt2-tigrinya-lora");

    /// <summary>GPT-2 small's shape (the adapter's base, whose weights are not available offline), randomly initialized.</summary>
    static JsonObject Gpt2SmallConfig() => new()
    {
        ["model_type"] = "gpt2", ["architectures"] = new JsonArray("GPT2LMHeadModel"), ["n_embd"] = 768, ["n_layer"] = 12, ["n_head"] = 12,
        ["n_positions"] = 1024, ["vocab_size"] = 50257, ["activation_function"] = "gelu_new", ["layer_norm_epsilon"] = 1e-5,
        ["initializer_range"] = 0.02, ["bos_token_id"] = 50256, ["eos_token_id"] = 50256,
    };

    [Fact]
    public void Real_peft_0_17_gpt2_adapter_loads_inspects_and_merges()
    {
        using var scope = NewDisposeScope();
        var warnings = new List<string>();
        var oldWarn = PeftMethods.Warn;
        PeftMethods.Warn = warnings.Add;
        try
        {
            var config = Assert.IsType<LoraConfig>(PeftMethods.LoadConfig(Tigrinya));
            Assert.Equal(8, config.R);
            Assert.True(config.FanInFanOut);
            Assert.Empty(warnings); // every key of peft 0.17.1 is known
        }
        finally { PeftMethods.Warn = oldWarn; }

        manual_seed(0);
        var baseDir = TestPaths.TempDir();
        using (var init = AutoModel.FromConfig(AutoModel.ParseConfig(Gpt2SmallConfig()), dtype: ScalarType.BFloat16))
            AutoModel.SavePretrained(init, baseDir); // bf16 on disk halves the write; every path below reads it as float32

        using var peft = AutoPeftModel.FromPretrained(Tigrinya, baseDir);
        var wrapped = peft.AdapterLayers().Select(l => l.Name).ToList();
        Assert.Equal(36, wrapped.Count); // c_attn, attn.c_proj and mlp.c_proj in each of 12 blocks
        using (var file = SafetensorsFile.Open(Path.Combine(Tigrinya, AdapterFiles.WeightsFile)))
        {
            Assert.Equal(72, file.Keys.Count());
            var key = "base_model.model.transformer.h.7.mlp.c_proj.lora_B.weight";
            var loaded = peft.Model.state_dict()["transformer.h.7.mlp.c_proj.lora_B.default.weight"];
            Assert.True(file.Load(key).equal(loaded).all().item<bool>());
        }

        var ids = tensor(new long[] { 464, 3290, 318, 257, 1332, 286, 262, 1708 }).unsqueeze(0);
        Tensor adapterLogits;
        using (no_grad()) adapterLogits = peft.Forward(new ModelInputs { InputIds = ids }).Logits;

        var (code, stdout, stderr) = CliRunner.Run("inspect-adapter", Tigrinya, "--model", baseDir);
        Assert.True(code == 0, stderr);
        Assert.Contains("method        LORA", stdout);
        Assert.Contains("targets       [c_attn, c_proj]", stdout);
        Assert.Contains("r=8, lora_alpha=32", stdout);
        Assert.Contains("file          72 tensors", stdout);
        Assert.Contains("transformer.h.11.mlp.c_proj", stdout);

        // Merged through the library: the CLI's merge adds the same per-module report inspect-adapter just computed
        // (36 ranks of 768x2304 updates), and `peft merge` itself is exercised on the other real adapters.
        var merged = Path.Combine(baseDir, "merged");
        peft.SaveMerged(merged);
        using var mergedModel = AutoModel.FromPretrained(merged);
        using (no_grad())
        {
            var mergedLogits = mergedModel.Forward(ids).Logits;
            Assert.True(adapterLogits.allclose(mergedLogits, rtol: 0, atol: 2e-3), $"max |diff| {(adapterLogits - mergedLogits).abs().max().item<float>()}");
            // fan_in_fan_out: Conv1D stores [in, out], so the merge adds scale * (B A)^T; scale = 32 / 8.
            using var baseModel = AutoModel.FromPretrained(baseDir);
            using var file = SafetensorsFile.Open(Path.Combine(Tigrinya, AdapterFiles.WeightsFile));
            var a = file.Load("base_model.model.transformer.h.0.attn.c_attn.lora_A.weight");
            var b = file.Load("base_model.model.transformer.h.0.attn.c_attn.lora_B.weight");
            var expected = baseModel.state_dict()["transformer.h.0.attn.c_attn.weight"] + 4.0 * b.matmul(a).t();
            Assert.True(expected.allclose(mergedModel.state_dict()["transformer.h.0.attn.c_attn.weight"], rtol: 0, atol: 1e-5));
        }
        Directory.Delete(baseDir, recursive: true);
    }

    /// <summary>bert-tiny-cls's weights saved as another class: BertModel (no "bert." prefix, no classifier) or BertForMaskedLM (no pooler, an MLM head).</summary>
    static string SaveBertAs(string architecture)
    {
        var dir = TestPaths.TempDir();
        var source = TestPaths.Model("bert-tiny-cls");
        var config = JsonNode.Parse(File.ReadAllText(Path.Combine(source, "config.json")))!.AsObject();
        config["architectures"] = new JsonArray(architecture);
        config.Remove("id2label"); config.Remove("label2id"); // a plain encoder's config: transformers' default of 2 labels
        File.WriteAllText(Path.Combine(dir, "config.json"), config.ToJsonString());
        using var file = SafetensorsFile.Open(Path.Combine(source, Checkpoint.SingleFile));
        var tensors = new Dictionary<string, Tensor>();
        foreach (var key in file.Keys.Where(k => !k.StartsWith("classifier.", StringComparison.Ordinal)))
        {
            if (architecture == "BertModel") tensors[key["bert.".Length..]] = file.Load(key);
            else if (!key.StartsWith("bert.pooler.", StringComparison.Ordinal)) tensors[key] = file.Load(key);
        }
        if (architecture == "BertForMaskedLM")
        {
            tensors["cls.predictions.bias"] = zeros(320);
            tensors["cls.predictions.transform.dense.weight"] = zeros(64, 64);
        }
        SafetensorsWriter.Save(Path.Combine(dir, Checkpoint.SingleFile), tensors, new Dictionary<string, string> { ["format"] = "pt" });
        return dir;
    }

    [Fact]
    public void Seq_cls_adapter_on_a_BertModel_folder_builds_the_head_and_fills_it_from_modules_to_save()
    {
        using var scope = NewDisposeScope();
        var baseDir = SaveBertAs("BertModel");
        var adapter = TestPaths.Data("adapters", "bert-tiny-cls", "lora_qv");
        Assert.IsType<BertModel>(AutoModel.FromPretrained(baseDir));

        using var peft = AutoPeftModel.FromPretrained(adapter, baseDir);
        Assert.IsType<BertForSequenceClassification>(peft.Model);
        var (ids, mask) = LoraFixtureTests.Inputs("bert-tiny-cls");
        using (no_grad())
        {
            var logits = peft.Forward(new ModelInputs { InputIds = ids, AttentionMask = mask, TokenTypeIds = LoraFixtureTests.TokenTypes("bert-tiny-cls") }).Logits;
            // The same logits peft computed on the original BertForSequenceClassification: the pooler came from the
            // BertModel checkpoint, the 3-label classifier from the adapter.
            FixtureAssert.Close(logits, LoraFixtureTests.Expected(Path.Combine(adapter, "expected.safetensors"), "logits"), null, 1e-4, "SEQ_CLS on BertModel");
        }

        var (code, stdout, stderr) = CliRunner.Run("inspect-adapter", adapter, "--model", baseDir);
        Assert.True(code == 0, stderr);
        Assert.Contains("method        LORA", stdout);
        var merged = Path.Combine(baseDir, "merged");
        (code, _, stderr) = CliRunner.Run("merge", "--model", baseDir, "--adapter", adapter, "--out", merged);
        Assert.True(code == 0, stderr);
        var mergedConfig = JsonNode.Parse(File.ReadAllText(Path.Combine(merged, "config.json")))!;
        Assert.Equal("BertForSequenceClassification", mergedConfig["architectures"]![0]!.GetValue<string>());
        Assert.Equal(3, mergedConfig["id2label"]!.AsObject().Count);
        Assert.IsType<BertForSequenceClassification>(AutoModel.FromPretrained(merged));
        Directory.Delete(baseDir, recursive: true);
    }

    [Fact]
    public void Seq_cls_adapter_on_a_BertForMaskedLM_folder_initializes_the_pooler_as_transformers_and_warns()
    {
        using var scope = NewDisposeScope();
        var baseDir = SaveBertAs("BertForMaskedLM");
        var warnings = new List<string>();
        var oldWarn = AutoModel.Warn;
        AutoModel.Warn = warnings.Add;
        try
        {
            using var peft = AutoPeftModel.FromPretrained(TestPaths.Data("adapters", "bert-tiny-cls", "lora_qv"), baseDir);
            Assert.IsType<BertForSequenceClassification>(peft.Model);
            Assert.Contains(warnings, w => w.Contains("newly initialized: bert.pooler.dense.bias, bert.pooler.dense.weight, classifier.bias, classifier.weight"));
            Assert.Contains(warnings, w => w.Contains("not used by BertForSequenceClassification: cls.predictions.bias, cls.predictions.transform.dense.weight"));
            var (ids, mask) = LoraFixtureTests.Inputs("bert-tiny-cls");
            using (no_grad())
                Assert.Equal(new long[] { ids.shape[0], 3 }, peft.Forward(new ModelInputs { InputIds = ids, AttentionMask = mask }).Logits.shape);
        }
        finally { AutoModel.Warn = oldWarn; Directory.Delete(baseDir, recursive: true); }
    }

    [Fact]
    public void Class_labelled_data_on_an_encoder_without_a_head_is_a_clear_error()
    {
        var baseDir = SaveBertAs("BertModel");
        var yaml = Path.Combine(baseDir, "cls.yaml");
        File.WriteAllText(yaml, $"""
            model_name_or_path: {baseDir}
            finetuning_type: lora
            lora_target: query,value
            dataset: {TestPaths.RepoFile("samples/data/bert_cls_tokenized.jsonl")}
            dataset_format: tokenized
            max_steps: 1
            output_dir: {Path.Combine(baseDir, "out")}
            """);
        var (code, _, stderr) = CliRunner.Run("train", yaml);
        Assert.Equal(1, code);
        Assert.Contains("rows have class labels ('label'), but", stderr);
        Assert.Contains("is a BertModel without a classification head", stderr);
        Assert.Single(stderr.Trim().Split('\n'));
        Directory.Delete(baseDir, recursive: true);
    }

    [Fact]
    public void Task_type_the_architecture_cannot_build_is_a_clear_error()
    {
        var e = Assert.Throws<PeftConfigException>(() => AutoModel.FromPretrained(TestPaths.Model("llama-tiny"), task: "SEQ_CLS"));
        Assert.Contains("task_type 'SEQ_CLS' needs a llama model with that head", e.Message);
        Assert.Contains("CAUSAL_LM (LlamaForCausalLM)", e.Message);
    }

    [Fact]
    public void Unknown_keys_of_a_newer_peft_are_ignored_with_one_warning()
    {
        var json = JsonNode.Parse(File.ReadAllText(Path.Combine(Tigrinya, AdapterFiles.ConfigFile)))!.AsObject();
        json["lora_future_option"] = 3;
        json["another_new_key"] = new JsonObject();
        var warnings = new List<string>();
        var oldWarn = PeftMethods.Warn;
        PeftMethods.Warn = warnings.Add;
        try
        {
            var config = Assert.IsType<LoraConfig>(PeftMethods.ParseConfig(json, "x/adapter_config.json"));
            Assert.Equal(32, config.LoraAlpha);
            var w = Assert.Single(warnings);
            Assert.Contains("another_new_key", w);
            Assert.Contains("lora_future_option", w);
        }
        finally { PeftMethods.Warn = oldWarn; }
    }
}
