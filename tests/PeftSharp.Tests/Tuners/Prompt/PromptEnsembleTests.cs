using PeftSharp.Models;
using PeftSharp.Tests.Tuners.Lora;
using PeftSharp.Tuners;
using PeftSharp.Tuners.PromptTuning;
using PeftSharp.Tuners.PrefixTuning;
using static TorchSharp.torch;

namespace PeftSharp.Tests.Tuners.Prompt;

public class PromptEnsembleTests
{
    [Fact]
    public void Members_run_in_one_batch_and_equal_their_single_adapter_forwards()
    {
        using var scope = NewDisposeScope();
        using var _ = no_grad();
        var peft = PeftModel.FromPretrained(AutoModel.FromPretrained(TestPaths.Model("bert-tiny-cls")), TestPaths.Data("adapters", "bert-tiny-cls", "prompt_tuning"), "a");
        peft.AddAdapter("b", new PromptTuningConfig { NumVirtualTokens = 8, TaskType = "SEQ_CLS" });
        peft.eval();
        var (ids, mask) = LoraFixtureTests.Inputs("bert-tiny-cls");
        using var cases = PeftSharp.IO.SafetensorsFile.Open(Path.Combine(TestPaths.Model("bert-tiny-cls"), "cases.safetensors"));
        var inputs = new ModelInputs { InputIds = ids, AttentionMask = mask, TokenTypeIds = cases.Load("token_type_ids") };
        var ensemble = new PromptEnsemble(peft, new[] { "a", "b" });
        var members = ensemble.MemberLogits(inputs);
        Assert.Equal(new long[] { 2, 3, 3 }, members.shape);
        foreach (var (name, k) in new[] { ("a", 0), ("b", 1) })
        {
            peft.SetAdapter(name);
            FixtureAssert.Close(members[k], peft.Forward(inputs).Logits, null, 1e-5, $"member {name}");
        }
        var fixture = LoraFixtureTests.Expected(TestPaths.Data("adapters", "bert-tiny-cls", "prompt_tuning", "expected.safetensors"), "logits");
        FixtureAssert.Close(members[0], fixture, null, 1e-4, "member a vs peft");
        var probs = ensemble.Probabilities(inputs);
        FixtureAssert.Close(probs, (members[0].softmax(-1) + members[1].softmax(-1)) / 2, null, 1e-6, "mean probabilities");
        Assert.Equal(new long[] { 3 }, ensemble.Vote(inputs).shape);
        Assert.Throws<PeftSharpException>(() => new PromptEnsemble(peft, new[] { "a" }));
    }
}

public class PromptFamilyTests
{
    [Fact]
    public void Finetuning_types_map_to_peft_types()
    {
        var s = new PeftSharp.Tuners.PromptLearning.PromptFamilySettings { NumVirtualTokens = 6, PrefixProjection = true };
        string Type(string t) => PeftSharp.Tuners.PromptLearning.PromptFamily.Config(t, s, "CAUSAL_LM", 2).PeftType;
        Assert.Equal(new[] { "PROMPT_TUNING", "P_TUNING", "PREFIX_TUNING", "PREFIX_TUNING", "ADAPTION_PROMPT" },
            PeftSharp.Tuners.PromptLearning.PromptFamily.FinetuningTypes.Select(Type));
        var v2 = (PrefixTuningConfig)PeftSharp.Tuners.PromptLearning.PromptFamily.Config("p_tuning_v2", s, "SEQ_CLS", 2);
        Assert.False(v2.PrefixProjection);
        Assert.Equal(("SEQ_CLS", 6), (v2.TaskType, v2.NumVirtualTokens));
        Assert.Equal(2, ((PeftSharp.Tuners.AdaptionPrompt.AdaptionPromptConfig)PeftSharp.Tuners.PromptLearning.PromptFamily.Config("llama_adapter", s, "CAUSAL_LM", 2)).AdapterLayers);
        Assert.Throws<PeftConfigException>(() => PeftSharp.Tuners.PromptLearning.PromptFamily.Config("lora", s, "CAUSAL_LM", 2));
    }
}
