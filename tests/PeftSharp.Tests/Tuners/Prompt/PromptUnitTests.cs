using PeftSharp.Models;
using PeftSharp.Tests.Tokenization;
using PeftSharp.Tests.Tuners.Lora;
using PeftSharp.Tokenization;
using PeftSharp.Tuners;
using PeftSharp.Tuners.AdaptionPrompt;
using PeftSharp.Tuners.PrefixTuning;
using PeftSharp.Tuners.PromptTuning;
using PeftSharp.Tuners.PTuning;
using static TorchSharp.torch;

namespace PeftSharp.Tests.Tuners.Prompt;

/// <summary>Fresh prompt-family adapters: prepared configs, shapes, parameter counts, init, errors and save/reload.</summary>
public class PromptUnitTests
{
    static PreTrainedModel Model(string name) => AutoModel.FromPretrained(TestPaths.Model(name));

    static ModelOutput Run(PeftModel peft, string baseModel)
    {
        var (ids, mask) = LoraFixtureTests.Inputs(baseModel);
        return peft.Forward(new ModelInputs { InputIds = ids, AttentionMask = mask });
    }

    [Fact]
    public void Prompt_tuning_fills_sizes_from_the_model_and_prepends_virtual_positions()
    {
        using var scope = NewDisposeScope();
        var peft = PeftModel.Create(Model("llama-tiny"), new PromptTuningConfig { NumVirtualTokens = 5, TaskType = "CAUSAL_LM" });
        var c = (PromptTuningConfig)peft.ActiveConfig;
        Assert.Equal((64, 4, 2, 1), (c.TokenDim!.Value, c.NumAttentionHeads!.Value, c.NumLayers!.Value, c.NumTransformerSubmodules!.Value));
        Assert.Equal(5 * 64, peft.TrainableParameterCounts().Trainable);
        using var _ = no_grad();
        Assert.Equal(new long[] { 3, 15, 320 }, Run(peft, "llama-tiny").Logits.shape);
        var labels = peft.ExtendLabels(ones(3, 10, ScalarType.Int64));
        Assert.Equal(new long[] { 3, 15 }, labels.shape);
        Assert.Equal(-100L, labels[0, 4].item<long>());
        Assert.Equal(1L, labels[0, 5].item<long>());
    }

    [Fact]
    public void Prompt_tuning_text_init_copies_the_word_embeddings_of_the_text_repeated()
    {
        using var scope = NewDisposeScope();
        var dir = TestPaths.TempDir();
        TinyTokenizer.WriteTo(dir);
        var model = Model("llama-tiny");
        var config = new PromptTuningConfig { NumVirtualTokens = 7, PromptTuningInit = "TEXT", PromptTuningInitText = "hello", TokenizerNameOrPath = dir };
        var peft = PeftModel.Create(model, config);
        var ids = HfTokenizer.FromFolder(dir).Encode("hello");
        var words = TiedLMHead.EmbeddingWeight(model.InputEmbeddings);
        var saved = peft.AdapterStateDict("default")[PeftModel.PromptEmbeddingsKey];
        for (int i = 0; i < 7; i++) Assert.True(saved[i].equal(words[ids[i % ids.Count]]).all().item<bool>(), $"row {i}");
    }

    [Fact]
    public void P_tuning_mlp_and_lstm_save_the_encoder_output_and_reload_to_the_same_logits()
    {
        foreach (var type in new[] { "MLP", "LSTM" })
        {
            using var scope = NewDisposeScope();
            var config = new PromptEncoderConfig { NumVirtualTokens = 4, EncoderReparameterizationType = type, EncoderHiddenSize = 16 };
            var peft = PeftModel.Create(Model("llama-tiny"), config);
            long expected = type == "MLP"
                ? 4 * 64 + (64 * 16 + 16) + (16 * 16 + 16) + (16 * 64 + 64)
                : 4 * 64 + 2 * 4 * 16 * (64 + 16 + 2) + 2 * 4 * 16 * (32 + 16 + 2) + (32 * 32 + 32) + (32 * 64 + 64);
            Assert.Equal(expected, peft.TrainableParameterCounts().Trainable);
            var dir = TestPaths.TempDir();
            peft.SaveAdapter(dir);
            using var _ = no_grad();
            var before = Run(peft, "llama-tiny").Logits;
            var reloaded = PeftModel.FromPretrained(Model("llama-tiny"), dir);
            Assert.Equal(new long[] { 4, 64 }, reloaded.AdapterStateDict("default")[PeftModel.PromptEmbeddingsKey].shape);
            FixtureAssert.Close(Run(reloaded, "llama-tiny").Logits, before, null, 1e-5, $"{type} reload");
        }
    }

    [Fact]
    public void Prefix_tuning_on_gqa_uses_key_value_heads_and_projection_saves_the_projected_prefix()
    {
        using var scope = NewDisposeScope();
        var peft = PeftModel.Create(Model("qwen2-tiny"), new PrefixTuningConfig { NumVirtualTokens = 3, PrefixProjection = true, EncoderHiddenSize = 20 });
        var c = (PrefixTuningConfig)peft.ActiveConfig;
        var mc = (LlamaConfig)peft.Model.Config;
        Assert.Equal(mc.NumKeyValueHeads * mc.HeadDim, c.TokenDim);
        Assert.Equal(mc.NumKeyValueHeads, c.NumAttentionHeads);
        var dir = TestPaths.TempDir();
        peft.SaveAdapter(dir);
        using var _ = no_grad();
        var before = Run(peft, "qwen2-tiny").Logits;
        Assert.Equal(new long[] { 3, 10, mc.VocabSize }, before.shape);
        var reloaded = PeftModel.FromPretrained(Model("qwen2-tiny"), dir);
        Assert.Equal(new long[] { 3, mc.NumHiddenLayers * 2 * c.TokenDim!.Value }, reloaded.AdapterStateDict("default")[PeftModel.PromptEmbeddingsKey].shape);
        var (_, mask) = LoraFixtureTests.Inputs("qwen2-tiny");
        FixtureAssert.Close(Run(reloaded, "qwen2-tiny").Logits, before, mask, 1e-5, "projected prefix reload");
    }

    [Fact]
    public void P_tuning_v2_on_bert_classification_trains_prefix_and_classifier_and_saves_them_as_peft()
    {
        using var scope = NewDisposeScope();
        var peft = PeftModel.Create(Model("bert-tiny-cls"), PrefixTuningConfig.PTuningV2(4, "SEQ_CLS"));
        var c = (PrefixTuningConfig)peft.ActiveConfig;
        Assert.Equal(new[] { "classifier", "score", "classifier", "score" }, c.ModulesToSave);
        Assert.Equal(4 * 2 * 2 * 64 + (3 * 64 + 3), peft.TrainableParameterCounts().Trainable);
        var keys = peft.AdapterStateDict("default").Keys.OrderBy(k => k, StringComparer.Ordinal);
        Assert.Equal(new[] { "base_model.classifier.bias", "base_model.classifier.weight", "prompt_embeddings" }, keys);
    }

    [Fact]
    public void Fresh_adaption_prompt_is_a_no_op_until_its_gate_moves()
    {
        using var scope = NewDisposeScope();
        using var _ = no_grad();
        var plain = Model("llama-tiny");
        var (ids, mask) = LoraFixtureTests.Inputs("llama-tiny");
        var baseLogits = plain.Forward(ids, mask).Logits;
        var peft = PeftModel.Create(plain, new AdaptionPromptConfig { AdapterLen = 3, AdapterLayers = 2 });
        Assert.Equal(2 * (3 * 64 + 1), peft.TrainableParameterCounts().Trainable);
        Assert.True(Run(peft, "llama-tiny").Logits.equal(baseLogits).all().item<bool>());
        foreach (var (_, layer) in peft.AdapterLayers()) ((AdaptedAttention)layer).LoadAdapterState("default", "adaption_gate", full(1, 0.5f));
        var moved = Run(peft, "llama-tiny").Logits;
        Assert.True(FixtureAssert.MaxAbsDiff(moved, baseLogits, mask) > 1e-3);
        using (peft.DisableAdapters()) Assert.True(Run(peft, "llama-tiny").Logits.equal(baseLogits).all().item<bool>());
    }

    [Fact]
    public void Disabling_a_prefix_gives_the_base_logits()
    {
        using var scope = NewDisposeScope();
        using var _ = no_grad();
        var model = Model("gpt2-tiny");
        var (ids, mask) = LoraFixtureTests.Inputs("gpt2-tiny");
        var baseLogits = model.Forward(ids, mask).Logits;
        var peft = PeftModel.FromPretrained(model, TestPaths.Data("adapters", "gpt2-tiny", "prefix_tuning"));
        Assert.True(FixtureAssert.MaxAbsDiff(Run(peft, "gpt2-tiny").Logits, baseLogits, mask) > 1e-2);
        using (peft.DisableAdapters()) FixtureAssert.Close(Run(peft, "gpt2-tiny").Logits, baseLogits, mask, 0, "disabled prefix");
    }

    [Fact]
    public void Prompt_family_adapters_refuse_mixed_batches_merging_and_a_second_method()
    {
        using var scope = NewDisposeScope();
        var peft = PeftModel.FromPretrained(Model("llama-tiny"), TestPaths.Data("adapters", "llama-tiny", "prefix_tuning"));
        var (ids, mask) = LoraFixtureTests.Inputs("llama-tiny");
        var mixed = Assert.Throws<PeftSharpException>(() => peft.Forward(new ModelInputs { InputIds = ids, AttentionMask = mask }, new[] { "default", "__base__", "default" }));
        Assert.Contains("PREFIX_TUNING", mixed.Message);
        Assert.Contains("mixed-adapter batches", mixed.Message);
        Assert.Contains("cannot be merged", Assert.Throws<PeftSharpException>(() => peft.MergeAndUnload()).Message);
        Assert.Throws<PeftConfigException>(() => peft.LoadAdapter(TestPaths.Data("adapters", "llama-tiny", "lora_qv"), "lora"));

        var ap = PeftModel.FromPretrained(Model("llama-tiny"), TestPaths.Data("adapters", "llama-tiny", "adaption_prompt"));
        Assert.Contains("ADAPTION_PROMPT", Assert.Throws<PeftSharpException>(() => ap.Forward(new ModelInputs { InputIds = ids, AttentionMask = mask }, new[] { "default", "default", "default" })).Message);
        Assert.Throws<PeftSharpException>(() => ap.Merge());
    }

    [Fact]
    public void Configs_name_the_bad_field()
    {
        var json = (System.Text.Json.Nodes.JsonObject)System.Text.Json.Nodes.JsonNode.Parse("""{"peft_type":"P_TUNING","num_virtual_tokens":4,"encoder_reparameterization_type":"GRU"}""")!;
        Assert.Contains("encoder_reparameterization_type", Assert.Throws<PeftConfigException>(() => PeftMethods.ParseConfig(json, "x.json")).Message);
        json = (System.Text.Json.Nodes.JsonObject)System.Text.Json.Nodes.JsonNode.Parse("""{"peft_type":"ADAPTION_PROMPT","adapter_len":4}""")!;
        Assert.Contains("adapter_layers", Assert.Throws<PeftConfigException>(() => PeftMethods.ParseConfig(json, "x.json")).Message);
        Assert.Contains("model types", Assert.Throws<PeftConfigException>(() => PeftModel.Create(Model("gpt2-tiny"), new AdaptionPromptConfig { AdapterLen = 2, AdapterLayers = 1 })).Message);
    }
}
