using PeftSharp.Models;
using PeftSharp.Tests.Tuners.Lora;
using PeftSharp.Tuners;
using PeftSharp.Tuners.AdaptionPrompt;
using PeftSharp.Tuners.PrefixTuning;
using PeftSharp.Tuners.PromptTuning;
using PeftSharp.Tuners.PTuning;
using TorchSharp;
using static TorchSharp.torch;

namespace PeftSharp.Tests.Tuners.Prompt;

/// <summary>
/// Each prompt-family method learns a small task with the base model frozen (a plain AdamW loop: the method's
/// trainable tensors are all that change): a causal LM learns fixed continuations, BERT learns three labels.
/// </summary>
public class PromptLearningTests
{
    public static TheoryData<string> CausalMethods => new() { "prompt_tuning", "p_tuning_mlp", "p_tuning_lstm", "prefix_tuning", "prefix_tuning_proj", "llama_adapter" };

    static PeftConfig ConfigFor(string method) => method switch
    {
        "prompt_tuning" => new PromptTuningConfig { NumVirtualTokens = 4, TaskType = "CAUSAL_LM" },
        "p_tuning_mlp" => new PromptEncoderConfig { NumVirtualTokens = 4, EncoderHiddenSize = 32, TaskType = "CAUSAL_LM" },
        "p_tuning_lstm" => new PromptEncoderConfig { NumVirtualTokens = 4, EncoderHiddenSize = 16, EncoderReparameterizationType = "LSTM", TaskType = "CAUSAL_LM" },
        "prefix_tuning" => new PrefixTuningConfig { NumVirtualTokens = 4, TaskType = "CAUSAL_LM" },
        "prefix_tuning_proj" => new PrefixTuningConfig { NumVirtualTokens = 4, PrefixProjection = true, EncoderHiddenSize = 32, TaskType = "CAUSAL_LM" },
        "llama_adapter" => new AdaptionPromptConfig { AdapterLen = 4, AdapterLayers = 2, TaskType = "CAUSAL_LM" },
        _ => throw new ArgumentException(method),
    };

    static (double First, double Last) Train(PeftModel peft, Func<Tensor> loss, int steps, double lr)
    {
        peft.train();
        var trainable = peft.parameters().Where(p => p.requires_grad).ToList();
        using var opt = optim.AdamW(trainable, lr);
        double first = 0, last = 0;
        for (int s = 0; s < steps; s++)
        {
            using var scope = NewDisposeScope();
            opt.zero_grad();
            var l = loss();
            l.backward();
            opt.step();
            last = l.item<float>();
            if (s == 0) first = last;
        }
        return (first, last);
    }

    [Theory]
    [MemberData(nameof(CausalMethods))]
    public void Causal_lm_method_learns_fixed_continuations_and_leaves_the_base_frozen(string method)
    {
        using var scope = NewDisposeScope();
        manual_seed(3);
        var model = AutoModel.FromPretrained(TestPaths.Model("llama-tiny"));
        var before = model.state_dict().ToDictionary(kv => kv.Key, kv => kv.Value.clone());
        var peft = PeftModel.Create(model, ConfigFor(method));
        var (ids, _) = LoraFixtureTests.Inputs("llama-tiny");
        ids = ids.narrow(0, 0, 1).narrow(1, 0, 6);
        var labels = peft.ExtendLabels(ids);
        Tensor Loss()
        {
            var logits = peft.Forward(new ModelInputs { InputIds = ids }).Logits;
            long v = logits.shape[2];
            return nn.functional.cross_entropy(logits[.., ..^1].reshape(-1, v), labels[.., 1..].reshape(-1), ignore_index: -100);
        }
        var (first, last) = Train(peft, Loss, 30, 1e-1);
        Assert.True(last < 0.6 * first, $"{method}: loss {first:F3} -> {last:F3}");
        var after = model.state_dict();
        foreach (var (key, value) in before)
            if (after.TryGetValue(key, out var now)) Assert.True(now.equal(value).all().item<bool>(), $"{method}: base weight {key} changed");
    }

    [Fact]
    public void P_tuning_v2_learns_bert_classification_labels()
    {
        using var scope = NewDisposeScope();
        manual_seed(3);
        var peft = PeftModel.Create(AutoModel.FromPretrained(TestPaths.Model("bert-tiny-cls")), PrefixTuningConfig.PTuningV2(4, "SEQ_CLS"));
        var (ids, mask) = LoraFixtureTests.Inputs("bert-tiny-cls");
        var target = tensor(new long[] { 2, 0, 1 });
        Tensor Loss() => nn.functional.cross_entropy(peft.Forward(new ModelInputs { InputIds = ids, AttentionMask = mask }).Logits, target);
        var (first, last) = Train(peft, Loss, 40, 3e-2);
        Assert.True(last < 0.3 * first, $"P-Tuning v2: loss {first:F3} -> {last:F3}");
        peft.eval();
        using var _ = no_grad();
        Assert.True(peft.Forward(new ModelInputs { InputIds = ids, AttentionMask = mask }).Logits.argmax(-1).equal(target).all().item<bool>());
    }
}
