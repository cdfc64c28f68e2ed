using PeftSharp.Inference;
using PeftSharp.Models;
using PeftSharp.Tests.Inference;
using PeftSharp.Tests.Tuners.Lora;
using PeftSharp.Tuners;
using static TorchSharp.torch;

namespace PeftSharp.Tests.Tuners.Prompt;

/// <summary>The prompt-family fixtures made by peft 0.20.0: logits (virtual positions included where peft has them), greedy generation, save round trip.</summary>
public class PromptFixtureTests
{
    public static TheoryData<string, string> Cases => new()
    {
        { "llama-tiny", "prompt_tuning" },
        { "llama-tiny", "p_tuning" },
        { "llama-tiny", "prefix_tuning" },
        { "llama-tiny", "prefix_tuning_proj" },
        { "llama-tiny", "adaption_prompt" },
        { "gpt2-tiny", "prefix_tuning" },
        { "bert-tiny-cls", "prefix_tuning" },
        { "bert-tiny-cls", "prompt_tuning" },
    };

    public static TheoryData<string, string> GenerationCases => new()
    {
        { "llama-tiny", "prompt_tuning" },
        { "llama-tiny", "p_tuning" },
        { "llama-tiny", "prefix_tuning" },
        { "llama-tiny", "prefix_tuning_proj" },
        { "llama-tiny", "adaption_prompt" },
        { "gpt2-tiny", "prefix_tuning" },
    };

    static PeftModel Load(string baseModel, string caseName) =>
        PeftModel.FromPretrained(AutoModel.FromPretrained(TestPaths.Model(baseModel)), TestPaths.Data("adapters", baseModel, caseName));

    static Tensor? TokenTypes(string baseModel)
    {
        using var cases = SafetensorsFileOpen(baseModel);
        return cases.Keys.Contains("token_type_ids") ? cases.Load("token_type_ids") : null;
    }

    static PeftSharp.IO.SafetensorsFile SafetensorsFileOpen(string baseModel) => PeftSharp.IO.SafetensorsFile.Open(Path.Combine(TestPaths.Model(baseModel), "cases.safetensors"));

    [Theory]
    [MemberData(nameof(Cases))]
    public void Adapter_reproduces_peft_logits(string baseModel, string caseName)
    {
        using var scope = NewDisposeScope();
        using var _ = no_grad();
        var (ids, mask) = LoraFixtureTests.Inputs(baseModel);
        var peft = Load(baseModel, caseName);
        var logits = peft.Forward(new ModelInputs { InputIds = ids, AttentionMask = mask, TokenTypeIds = TokenTypes(baseModel) }).Logits;
        var expected = LoraFixtureTests.Expected(TestPaths.Data("adapters", baseModel, caseName, "expected.safetensors"), "logits");
        // Classifier logits are per row; LM logits are compared where a query is real (virtual positions always are).
        Tensor? compareMask = null;
        if (expected.dim() == 3)
        {
            long extra = expected.shape[1] - mask.shape[1];
            compareMask = extra == 0 ? mask : cat(new[] { ones(mask.shape[0], extra, mask.dtype), mask }, 1);
        }
        FixtureAssert.Close(logits, expected, compareMask, 1e-4, $"{baseModel}/{caseName} logits");
    }

    [Theory]
    [MemberData(nameof(GenerationCases))]
    public void Greedy_generation_matches_peft(string baseModel, string caseName)
    {
        using var scope = NewDisposeScope();
        var fx = GreedyFixture.FromFolder(TestPaths.Data("adapters", baseModel, caseName));
        var generator = new TextGenerator(Load(baseModel, caseName));
        var single = generator.Generate(new[] { fx.SinglePrompt }, GreedyFixture.Options);
        Assert.Equal(fx.SingleOutput, single.Sequences[0]);
        var batch = generator.Generate(fx.BatchUnpadded, GreedyFixture.Options);
        for (int r = 0; r < fx.BatchOutput.Length; r++) Assert.Equal(fx.BatchOutput[r], batch.Sequences[r]);
    }

    [Theory]
    [MemberData(nameof(Cases))]
    public void Saved_adapter_has_peft_keys_shapes_and_config(string baseModel, string caseName)
    {
        using var scope = NewDisposeScope();
        var outDir = TestPaths.TempDir();
        Load(baseModel, caseName).SaveAdapter(outDir);
        LoraFixtureTests.AssertSameAdapterFiles(TestPaths.Data("adapters", baseModel, caseName), outDir, compareValues: true);
    }
}
