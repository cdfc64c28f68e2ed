using PeftSharp.Tuners.PromptLearning;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;
using static TorchSharp.torch.nn;

namespace PeftSharp.Tuners.PTuning;

/// <summary>
/// peft's <c>PromptEncoder</c>. Training: <c>embedding</c> [nvt, token_dim] → MLP head (Linear-ReLU-Linear-ReLU-Linear)
/// or bidirectional LSTM → Linear-ReLU-Linear. Inference (a loaded adapter): only <c>embedding</c>, holding the
/// encoder's final output, which is what peft saves as <c>prompt_embeddings</c>.
/// </summary>
public sealed class PromptEncoder : VirtualTokenLearner
{
    readonly Embedding embedding;
    readonly LSTM? lstm_head;
    readonly Module<Tensor, Tensor>? mlp_head;

    public PromptEncoder(PromptEncoderConfig c) : base(nameof(PromptEncoder), c)
    {
        int d = c.TokenDim!.Value, h = c.EncoderHiddenSize ?? d;
        embedding = Embedding(c.TotalVirtualTokens, d);
        if (!c.InferenceMode)
        {
            if (c.EncoderReparameterizationType == "LSTM")
            {
                lstm_head = LSTM(d, h, c.EncoderNumLayers, bidirectional: true, batchFirst: true, dropout: c.EncoderDropout);
                mlp_head = Sequential(Linear(2 * h, 2 * h), ReLU(), Linear(2 * h, d));
            }
            else
            {
                if (c.EncoderNumLayers != 2) PeftMethods.Warn($"P_TUNING: encoder_num_layers {c.EncoderNumLayers} is ignored by the MLP encoder (always 3 linears, as peft)");
                mlp_head = Sequential(Linear(d, h), ReLU(), Linear(h, h), ReLU(), Linear(h, d));
            }
        }
        RegisterComponents();
    }

    bool Reparameterized => mlp_head is not null;

    protected override Tensor Prompts()
    {
        if (!Reparameterized) return embedding.weight!;
        using var scope = NewDisposeScope();
        var x = embedding.weight!.unsqueeze(0);
        if (lstm_head is not null) x = lstm_head.call(x, null).Item1;
        return mlp_head!.call(x).squeeze(0).MoveToOuterDisposeScope();
    }

    public override Tensor PromptEmbeddings()
    {
        using var _ = no_grad();
        return Prompts().detach();
    }

    public override void LoadPromptEmbeddings(Tensor value, string source)
    {
        if (Reparameterized)
            throw new PeftSharpException($"{source}: a saved P-Tuning adapter holds the encoder's output, not the encoder; load it for inference (peft refuses to train it further too)");
        CopyInto(embedding.weight!, value, source);
    }
}
