using PeftSharp.Models;
using PeftSharp.Tokenization;
using PeftSharp.Tuners.PromptLearning;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace PeftSharp.Tuners.PromptTuning;

/// <summary>peft's <c>PromptEmbedding</c>: <c>embedding</c> [total_virtual_tokens, token_dim], the prompt itself (same form in training and inference).</summary>
public sealed class PromptEmbedding : VirtualTokenLearner
{
    readonly Embedding embedding;

    public PromptEmbedding(PromptTuningConfig c, PreTrainedModel model) : base(nameof(PromptEmbedding), c)
    {
        embedding = nn.Embedding(c.TotalVirtualTokens, c.TokenDim!.Value);
        RegisterComponents();
        if (!c.InferenceMode) Initialize(c, model);
    }

    void Initialize(PromptTuningConfig c, PreTrainedModel model)
    {
        var words = TiedLMHead.EmbeddingWeight(model.InputEmbeddings);
        int total = c.TotalVirtualTokens;
        long[]? ids = c.PromptTuningInit switch
        {
            "SAMPLE_VOCAB" => randint(0, words.shape[0], new long[] { total }).data<long>().ToArray(),
            "TEXT" => TextIds(c, total),
            _ => null,
        };
        if (ids is null) return;
        using var _ = no_grad();
        using var index = tensor(ids, device: words.device);
        embedding.weight!.copy_(words.index_select(0, index).to(ScalarType.Float32));
    }

    // peft tokenizes with the tokenizer's defaults (special tokens such as BOS included), then truncates or repeats to fill.
    static long[] TextIds(PromptTuningConfig c, int total)
    {
        var tokenizer = HfTokenizer.FromFolder(c.TokenizerNameOrPath!);
        var ids = tokenizer.Encode(c.PromptTuningInitText!);
        if (ids.Count == 0) throw new PeftConfigException($"prompt_tuning_init_text '{c.PromptTuningInitText}' tokenizes to no tokens");
        return Enumerable.Range(0, total).Select(i => (long)ids[i % ids.Count]).ToArray();
    }

    protected override Tensor Prompts() => embedding.weight!;

    public override Tensor PromptEmbeddings() => embedding.weight!.detach();

    public override void LoadPromptEmbeddings(Tensor value, string source) => CopyInto(embedding.weight!, value, source);
}
