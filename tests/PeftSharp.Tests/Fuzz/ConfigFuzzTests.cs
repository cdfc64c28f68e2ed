using System.Text.Json.Nodes;
using CsCheck;
using PeftSharp.IO;
using PeftSharp.Models;

namespace PeftSharp.Tests.Fuzz;

/// <summary>config.json with hostile values: accepted configs are consistent with the checkpoint; the rest are refused naming the key.</summary>
public class ConfigFuzzTests
{
    static readonly string[] Keys =
    [
        "model_type", "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "head_dim",
        "intermediate_size", "rope_theta", "rms_norm_eps", "max_position_embeddings", "rope_scaling", "eos_token_id", "tie_word_embeddings",
        "hidden_act", "sliding_window", "attention_bias", "layer_types",
    ];

    static readonly string[] Values =
    [
        "0", "-1", "-16", "1", "2", "3", "16", "64", "1e9", "1000000000", "2147483648", "1.5", "-0.0", "1e-300", "1e308", "\"5\"", "\"llama\"",
        "\"gpt2\"", "\"bert\"", "5", "null", "true", "[]", "[1, 2]", "{}", "{\"rope_type\": \"llama3\", \"factor\": 8}", "{\"type\": \"linear\", \"factor\": -1}",
        "\"silu\"", "\"relu\"", "\"NaN\"", "\"Infinity\"", "[\"sliding_attention\"]", "4096", "4097", "65536",
    ];

    [Fact]
    public void Hostile_config_values_are_accepted_consistently_or_refused_by_key()
    {
        var dir = TestPaths.Model("llama-tiny");
        var source = Path.Combine(dir, "config.json");
        var original = JsonNode.Parse(File.ReadAllText(source))!.AsObject();
        using var checkpoint = Checkpoint.Open(dir);
        var h = new FuzzHarness("config.json", TimeSpan.FromSeconds(5));
        Gen.Select(Gen.Int[0, Keys.Length - 1], Gen.Int[0, Values.Length - 1], Gen.Int[0, Keys.Length - 1], Gen.Int[0, Values.Length - 1])
            .Fuzz((k1, v1, k2, v2) =>
            {
                var raw = (JsonObject)original.DeepClone();
                raw[Keys[k1]] = JsonNode.Parse(Values[v1]);
                raw[Keys[k2]] = JsonNode.Parse(Values[v2]);
                h.Case($"{Keys[k1]}={Values[v1]}, {Keys[k2]}={Values[v2]}", null, () =>
                {
                    var config = AutoModel.ParseConfig(raw, source);
                    AutoModel.CheckAgainstCheckpoint(config, checkpoint, source);
                    // Anything accepted describes a model of sane size with consistent heads.
                    Assert.InRange(config.MinParameterCount(source), 1, 1L << 40);
                    if (config is LlamaConfig l)
                    {
                        Assert.True(l.HeadDim > 0 && l.NumKeyValueHeads > 0 && l.NumAttentionHeads % l.NumKeyValueHeads == 0);
                        Assert.True(l.RopeTheta > 0 && l.RmsNormEps > 0 && double.IsFinite(l.RopeTheta));
                    }
                });
            }, iter: FuzzHarness.Iter(500));
        h.Report(minRejected: 200);
    }
}
