using PeftSharp.IO;
using PeftSharp.Models;
using static TorchSharp.torch;

namespace PeftSharp.Tests.Models;

public class KVCacheTests
{
    /// <summary>Prefix of 4 tokens, then one token at a time through the cache: every step's logits equal one full forward (left-padded row included).</summary>
    [Theory]
    [InlineData("gpt2-tiny")]
    [InlineData("llama-tiny")]
    [InlineData("mistral-tiny")]
    public void Cached_incremental_forward_equals_full_forward(string name)
    {
        using var scope = NewDisposeScope();
        var dir = TestPaths.Model(name);
        var model = AutoModel.FromPretrained(dir);
        using var cases = SafetensorsFile.Open(Path.Combine(dir, "cases.safetensors"));
        var ids = cases.Load("input_ids");
        var mask = cases.Load("attention_mask");
        using var _ = no_grad();
        var full = model.Forward(ids, mask).Logits;
        using var cache = model.NewCache();
        var steps = new List<Tensor>();
        for (long start = 0; start < ids.shape[1];)
        {
            long len = start == 0 ? 4 : 1;
            steps.Add(model.Forward(new ModelInputs { InputIds = ids.narrow(1, start, len), AttentionMask = mask.narrow(1, 0, start + len), Cache = cache }).Logits);
            start += len;
            Assert.Equal(start, cache.SeqLength);
        }
        FixtureAssert.Close(cat(steps, 1), full, mask, 1e-5, $"{name} incremental vs full logits");
    }
}
