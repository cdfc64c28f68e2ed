using PeftSharp.Models;
using static TorchSharp.torch;

namespace PeftSharp.Tests.Models;

public class AttentionTests
{
    [Fact]
    public void Bf16_eager_attention_matches_float32_sdpa_and_zeroes_padding_rows()
    {
        manual_seed(3);
        using var q = randn(2, 4, 6, 8);
        using var k = randn(2, 4, 6, 8);
        using var v = randn(2, 4, 6, 8);
        // Causal, and row 1 of the batch left-padded by two positions (its first two queries see nothing).
        using var causal = ones(6, 6, ScalarType.Bool).tril();
        using var keep = tensor(new[,] { { true, true, true, true, true, true }, { false, false, true, true, true, true } });
        using var mask = causal.unsqueeze(0) & keep.view(2, 1, 6);
        using var m4 = mask.unsqueeze(1);
        using var reference = nn.functional.scaled_dot_product_attention(q, k, v, m4);
        using var eager = Attention.Sdpa(q.to(ScalarType.BFloat16), k.to(ScalarType.BFloat16), v.to(ScalarType.BFloat16), m4).to(ScalarType.Float32);
        Assert.False(eager.isnan().any().item<bool>());
        // Rows with something to attend to agree to bfloat16 precision.
        using var rows = keep.view(2, 1, 6, 1).expand(2, 4, 6, 8);
        using var diff = (eager - reference).abs().masked_select(rows).max();
        Assert.True(diff.item<float>() < 0.05f, $"max diff {diff.item<float>()}");
        // The rows with nothing to attend to are zero, as SDPA gives them.
        Assert.Equal(0f, eager[1].narrow(1, 0, 2).abs().max().item<float>());
        // A float32 key/value prefix next to bfloat16 queries is cast, not refused.
        using var mixed = Attention.Sdpa(q.to(ScalarType.BFloat16), k, v, m4);
        Assert.Equal(ScalarType.BFloat16, mixed.dtype);
    }
}
