using System.Text.Json.Nodes;
using CsCheck;
using PeftSharp.Models;
using PeftSharp.Tuners;

namespace PeftSharp.Tests.Fuzz;

/// <summary>adapter_config.json with hostile values: the adapter loads onto the model, or is refused naming the file and key.</summary>
public class AdapterConfigFuzzTests
{
    static readonly string[] Keys = ["peft_type", "r", "lora_alpha", "lora_dropout", "target_modules", "rank_pattern", "alpha_pattern", "layers_to_transform", "fan_in_fan_out", "bias", "modules_to_save", "use_dora", "use_rslora", "init_lora_weights", "task_type"];
    static readonly string[] Values =
    [
        "null", "0", "-1", "8", "4", "1e9", "1.5", "\"x\"", "\"LORA\"", "\"IA3\"", "\"lora\"", "true", "[]", "[\"q_proj\"]", "[\"nope\"]", "[[\"q_proj\"]]",
        "{}", "{\"q_proj\": 0}", "{\"q_proj\": -4}", "[0, 99]", "[-1]", "\"all-linear\"", "\"lora_only\"", "2147483648", "{\"a\": \"b\"}",
    ];

    [Fact]
    public void Hostile_adapter_configs_load_or_are_refused_clearly()
    {
        var source = TestPaths.Data("adapters", "llama-tiny", "lora_qv");
        var original = JsonNode.Parse(File.ReadAllText(Path.Combine(source, "adapter_config.json")))!.AsObject();
        var dir = TestPaths.TempDir();
        foreach (var f in Directory.GetFiles(source)) File.Copy(f, Path.Combine(dir, Path.GetFileName(f)));
        var path = Path.Combine(dir, "adapter_config.json");
        var h = new FuzzHarness("adapter_config.json", TimeSpan.FromSeconds(10));
        Gen.Select(Gen.Int[0, Keys.Length - 1], Gen.Int[0, Values.Length - 1], Gen.Int[0, Keys.Length - 1], Gen.Int[0, Values.Length - 1])
            .Fuzz((k1, v1, k2, v2) =>
            {
                var json = (JsonObject)original.DeepClone();
                json[Keys[k1]] = JsonNode.Parse(Values[v1]);
                if (v2 % 2 == 0) json[Keys[k2]] = JsonNode.Parse(Values[v2]);
                File.WriteAllText(path, json.ToJsonString());
                using var model = AutoModel.FromPretrained(TestPaths.Model("llama-tiny"));
                h.Case($"{Keys[k1]}={Values[v1]}, {Keys[k2]}={Values[v2]}", null, () => PeftModel.FromPretrained(model, dir));
            }, iter: FuzzHarness.Iter(120));
        h.Report(minRejected: 30);
    }
}
