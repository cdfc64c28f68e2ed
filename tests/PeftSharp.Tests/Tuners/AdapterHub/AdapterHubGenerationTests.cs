using System.Text.Json;
using PeftSharp.Inference;
using PeftSharp.Models;
using PeftSharp.Tests.Cli;
using PeftSharp.Tests.Inference;
using PeftSharp.Tuners;
using static TorchSharp.torch;

namespace PeftSharp.Tests.Tuners.AdapterHub;

/// <summary>
/// Generation with AdapterHub adapters that carry a prefix: greedy ids equal the argmax of full forwards (no cache) of
/// the adapted model, step by step. prefix_tuning and mam decode from a KV cache seeded with the prefix; unipelt's
/// sequence-mean gates make the generator rerun the sequence.
/// </summary>
public class AdapterHubGenerationTests
{
    static readonly GenerationOptions Options = new() { MaxNewTokens = 6, PadTokenId = 0, EosTokenIds = Array.Empty<int>() };

    static int[][] Prompts => GreedyFixture.Load("llama-tiny").BatchUnpadded;

    /// <summary>Left-padded rows, each step a full forward over the whole sequence, next id = argmax of the last logits.</summary>
    static int[][] FullForwardGreedy(PeftModel peft, int[][] prompts, int steps)
    {
        using var _ = no_grad();
        int width = prompts.Max(p => p.Length);
        var ids = prompts.Select(p => Enumerable.Repeat(0, width - p.Length).Concat(p).ToList()).ToArray();
        var mask = prompts.Select(p => Enumerable.Repeat(0L, width - p.Length).Concat(Enumerable.Repeat(1L, p.Length)).ToList()).ToArray();
        var added = prompts.Select(_ => new List<int>()).ToArray();
        for (int s = 0; s < steps; s++)
        {
            using var scope = NewDisposeScope();
            int n = ids[0].Count;
            var maskT = tensor(mask.SelectMany(m => m).ToArray(), new long[] { ids.Length, n });
            var logits = peft.Forward(new ModelInputs
            {
                InputIds = tensor(ids.SelectMany(r => r.Select(v => (long)v)).ToArray(), new long[] { ids.Length, n }),
                AttentionMask = maskT,
                PositionIds = AttentionMasks.PositionIdsFromMask(maskT),
            }).Logits;
            var next = logits.select(1, -1).argmax(-1).data<long>().ToArray();
            for (int r = 0; r < ids.Length; r++) { ids[r].Add((int)next[r]); mask[r].Add(1); added[r].Add((int)next[r]); }
        }
        return added.Select(a => a.ToArray()).ToArray();
    }

    [Theory]
    [InlineData("prefix_tuning", true)]
    [InlineData("mam", true)]
    [InlineData("unipelt", false)]
    public void Greedy_generation_equals_argmax_of_full_forwards(string name, bool cached)
    {
        using var scope = NewDisposeScope();
        var peft = AdapterHubFixtureTests.Load("llama-tiny", AdapterHubFixtureTests.Case("llama-tiny", name));
        Assert.Equal(cached, peft.SupportsKVCache);
        var result = new TextGenerator(peft).Generate(Prompts, Options);
        var expected = FullForwardGreedy(peft, Prompts, Options.MaxNewTokens);
        Assert.Equal(expected, result.NewTokens);
        // The prefix changes what is generated (the test would be empty otherwise).
        using (peft.DisableAdapters())
            Assert.NotEqual(expected, new TextGenerator(peft).Generate(Prompts, Options).NewTokens);
    }

    [Fact]
    public void Cli_generate_accepts_an_adapterhub_prefix_folder()
    {
        var dir = AdapterHubFixtureTests.Case("llama-tiny", "mam");
        var ids = string.Join(';', Prompts.Select(r => string.Join(' ', r)));
        var (code, stdout, stderr) = CliRunner.Run("generate", "--model", TestPaths.Model("llama-tiny"), "--adapter", dir, "--input-ids", ids,
            "--max-new-tokens", "6", "--pad-id", "0", "--json");
        Assert.True(code == 0, stderr);
        using var doc = JsonDocument.Parse(stdout);
        var got = doc.RootElement.GetProperty("rows").EnumerateArray()
            .Select(r => r.GetProperty("new_ids").EnumerateArray().Select(x => x.GetInt32()).ToArray()).ToArray();
        using var scope = NewDisposeScope();
        var peft = AdapterHubFixtureTests.Load("llama-tiny", dir);
        var expected = FullForwardGreedy(peft, Prompts, 6);
        // The CLI stops a row at eos (the model's own eos id); compare up to there.
        for (int r = 0; r < expected.Length; r++) Assert.Equal(expected[r].Take(got[r].Length), got[r]);
        Assert.Contains(got, g => g.Length > 0);
    }
}
