using System.Text.Json.Nodes;
using PeftSharp.IO;
using PeftSharp.Models;
using static TorchSharp.torch;

namespace PeftSharp.Tests.Models;

public class BertTests
{
    static string Dir => TestPaths.Model("bert-tiny-cls");

    static ModelInputs Inputs(SafetensorsFile cases, bool hidden = false) => new()
    {
        InputIds = cases.Load("input_ids"),
        AttentionMask = cases.Load("attention_mask"),
        TokenTypeIds = cases.Load("token_type_ids"),
        OutputHiddenStates = hidden,
    };

    [Fact]
    public void Class_logits_and_hidden_states_match_transformers()
    {
        using var scope = NewDisposeScope();
        var model = AutoModel.FromPretrained(Dir);
        Assert.IsType<BertForSequenceClassification>(model);
        Assert.False(model.IsCausalLM);
        using var cases = SafetensorsFile.Open(Path.Combine(Dir, "cases.safetensors"));
        var mask = cases.Load("attention_mask");
        using var _ = no_grad();
        var output = model.Forward(Inputs(cases, hidden: true));
        Assert.Equal(new long[] { 3, 3 }, output.Logits.shape);
        FixtureAssert.Close(output.Logits, cases.Load("logits"), atol: 1e-4, what: "bert class logits");
        Assert.Equal(3, output.HiddenStates!.Count);
        for (int i = 0; i < output.HiddenStates.Count; i++)
            FixtureAssert.Close(output.HiddenStates[i], cases.Load($"hidden_states.{i}"), mask, 1e-4, $"bert hidden_states.{i}");
        FixtureAssert.Close(output.LastHiddenState!, cases.Load("hidden"), mask, 1e-4, "bert last_hidden_state");
    }

    [Fact]
    public void Config_reads_labels_from_id2label()
    {
        var c = (BertConfig)AutoModel.LoadConfig(Dir);
        Assert.Equal((3, 128, 2, 1e-12, "gelu"), (c.NumLabels, c.IntermediateSize, c.TypeVocabSize, c.LayerNormEps, c.HiddenAct));
    }

    /// <param name="ownKeys">true: a BertModel checkpoint (no "bert." prefix, no classifier); false: the classification checkpoint itself, whose head transformers drops.</param>
    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public void Bare_encoder_loads_and_returns_the_last_hidden_state(bool ownKeys)
    {
        using var folder = new ModifiedModelFolder(Dir, t => ownKeys ? ModifiedModelFolder.StripPrefix(t, "bert.") : t, c => c.Remove("architectures"));
        using var scope = NewDisposeScope();
        var model = AutoModel.FromPretrained(folder.Dir);
        Assert.IsType<BertModel>(model);
        using var cases = SafetensorsFile.Open(Path.Combine(Dir, "cases.safetensors"));
        var mask = cases.Load("attention_mask");
        using var _ = no_grad();
        var output = model.Forward(Inputs(cases));
        FixtureAssert.Close(output.Logits, cases.Load("hidden"), mask, 1e-4, "BertModel logits (= last hidden state)");
        Assert.Equal(new long[] { 3, 64 }, output.PooledOutput!.shape);
    }

    [Fact]
    public void Classifier_missing_from_a_base_checkpoint_is_an_error_naming_it()
    {
        using var folder = new ModifiedModelFolder(Dir, t => ModifiedModelFolder.StripPrefix(t, "bert."));
        var e = Assert.Throws<PeftFormatException>(() => AutoModel.FromPretrained(folder.Dir));
        Assert.Contains("missing keys: classifier.weight, classifier.bias", e.Message);
    }

    [Fact]
    public void Relative_position_embeddings_are_rejected()
    {
        var raw = (JsonObject)JsonNode.Parse(File.ReadAllText(Path.Combine(Dir, "config.json")))!;
        raw["position_embedding_type"] = "relative_key";
        var e = Assert.Throws<PeftConfigException>(() => AutoModel.ParseConfig(raw));
        Assert.Contains("position_embedding_type", e.Message);
    }

    [Fact]
    public void Bfloat16_forward_is_close_to_float32()
    {
        using var scope = NewDisposeScope();
        var model = AutoModel.FromPretrained(Dir, dtype: ScalarType.BFloat16);
        using var cases = SafetensorsFile.Open(Path.Combine(Dir, "cases.safetensors"));
        using var _ = no_grad();
        var output = model.Forward(Inputs(cases));
        Assert.Equal(ScalarType.BFloat16, output.Logits.dtype);
        FixtureAssert.Close(output.Logits, cases.Load("logits"), atol: 0.03, what: "bert bf16 class logits");
    }
}
