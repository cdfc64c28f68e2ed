using PeftSharp.IO;
using PeftSharp.Models;
using static TorchSharp.torch;

namespace PeftSharp.Tests.Models;

public class LlamaFamilyTests
{
    [Theory]
    [InlineData("llama-tiny")]
    [InlineData("llama-tiny-rope")]
    [InlineData("qwen2-tiny")]
    [InlineData("mistral-tiny")]
    public void Logits_and_hidden_states_match_transformers(string name)
    {
        using var scope = NewDisposeScope();
        var dir = TestPaths.Model(name);
        var model = AutoModel.FromPretrained(dir);
        using var cases = SafetensorsFile.Open(Path.Combine(dir, "cases.safetensors"));
        var ids = cases.Load("input_ids");
        var mask = cases.Load("attention_mask");
        using var _ = no_grad();
        var output = model.Forward(new ModelInputs { InputIds = ids, AttentionMask = mask, OutputHiddenStates = true });
        FixtureAssert.Close(output.Logits, cases.Load("logits"), mask, 1e-4, $"{name} logits");
        for (int i = 0; i < output.HiddenStates!.Count; i++)
            FixtureAssert.Close(output.HiddenStates[i], cases.Load($"hidden_states.{i}"), mask, 1e-4, $"{name} hidden_states.{i}");
    }
}
