using System.Text.Json;
using PeftSharp.Inference;
using PeftSharp.Models;
using TorchSharp;
using static TorchSharp.torch;

namespace PeftSharp.Tests.Inference;

/// <summary>greedy.json of a fixture model: generate(do_sample=False, max_new_tokens=8, pad_token_id=0, eos_token_id=2).</summary>
public sealed record GreedyFixture(int[] SinglePrompt, int[] SingleOutput, int[] SingleNew, int[][] BatchPrompt, int[][] BatchMask, int[][] BatchOutput, int[][] BatchNew)
{
    public static readonly GenerationOptions Options = new() { MaxNewTokens = 8, PadTokenId = 0, EosTokenIds = new[] { 2 } };

    public static GreedyFixture Load(string model) => FromFolder(TestPaths.Model(model));

    /// <summary>greedy.json of any fixture folder (models, adapters).</summary>
    public static GreedyFixture FromFolder(string dir)
    {
        using var doc = JsonDocument.Parse(File.ReadAllText(Path.Combine(dir, "greedy.json")));
        var single = doc.RootElement.GetProperty("single");
        var batch = doc.RootElement.GetProperty("batch");
        static int[] Row(JsonElement e) => e.EnumerateArray().Select(x => x.GetInt32()).ToArray();
        static int[][] Rows(JsonElement e) => e.EnumerateArray().Select(Row).ToArray();
        return new(Row(single.GetProperty("prompt")), Row(single.GetProperty("output")), Row(single.GetProperty("new_tokens")),
            Rows(batch.GetProperty("prompt")), Rows(batch.GetProperty("attention_mask")), Rows(batch.GetProperty("output")), Rows(batch.GetProperty("new_tokens")));
    }

    /// <summary>The batch prompts without their left padding.</summary>
    public int[][] BatchUnpadded => BatchPrompt.Select((p, r) => p.Where((_, i) => BatchMask[r][i] == 1).ToArray()).ToArray();
}

public class TextGeneratorTests
{
    static PreTrainedModel Load(string name) => AutoModel.FromPretrained(TestPaths.Model(name));

    static Tensor Matrix(int[][] rows) =>
        tensor(rows.SelectMany(r => r).Select(v => (long)v).ToArray(), new long[] { rows.Length, rows[0].Length });

    [Theory]
    [InlineData("llama-tiny")]
    [InlineData("llama-tiny-rope")]
    [InlineData("qwen2-tiny")]
    [InlineData("mistral-tiny")]
    [InlineData("gpt2-tiny")]
    public void Greedy_ids_match_transformers_for_single_prompt_and_left_padded_batch(string name)
    {
        var fx = GreedyFixture.Load(name);
        using var model = Load(name);
        var gen = new TextGenerator(model);

        var single = gen.Generate(new[] { fx.SinglePrompt }, GreedyFixture.Options);
        Assert.Equal(fx.SingleOutput, single.Sequences[0]);
        Assert.Equal(fx.SingleNew, single.NewTokens[0]);

        using var ids = Matrix(fx.BatchPrompt);
        using var mask = Matrix(fx.BatchMask);
        var batch = gen.Generate(ids, mask, GreedyFixture.Options);
        Assert.Equal(fx.BatchOutput, batch.Sequences);
        Assert.Equal(fx.BatchNew, batch.NewTokens);
        Assert.Equal(fx.BatchUnpadded, batch.PromptIds);

        // Prompts of unequal length are left-padded with the pad id: the same batch.
        var padded = gen.Generate(fx.BatchUnpadded, GreedyFixture.Options);
        Assert.Equal(fx.BatchOutput, padded.Sequences);
        Assert.All(batch.FinishReasons, r => Assert.Equal(FinishReason.Length, r));
    }

    /// <summary>Wraps a model and records, per forward, how many tokens it was fed and how many the cache already held.</summary>
    sealed class RecordingModel : PreTrainedModel
    {
        readonly PreTrainedModel inner;
        public readonly List<(long Input, long Past)> Calls = new();

        public RecordingModel(PreTrainedModel model) : base(nameof(RecordingModel), model.Config)
        {
            inner = model;
            RegisterComponents();
        }

        public override bool IsCausalLM => inner.IsCausalLM;
        public override nn.Module<Tensor, Tensor> InputEmbeddings => inner.InputEmbeddings;
        public override (int KvHeads, int HeadDim) KvShape => inner.KvShape;

        public override ModelOutput Forward(ModelInputs inputs)
        {
            Calls.Add((inputs.InputIds!.shape[1], inputs.Cache?.SeqLength ?? -1));
            return inner.Forward(inputs);
        }
    }

    [Fact]
    public void Prompt_runs_once_then_each_step_feeds_only_the_new_token()
    {
        var fx = GreedyFixture.Load("llama-tiny");
        using var model = new RecordingModel(Load("llama-tiny"));
        var result = new TextGenerator(model).Generate(fx.BatchUnpadded, GreedyFixture.Options);

        Assert.Equal(fx.BatchOutput, result.Sequences);
        int promptLen = fx.BatchPrompt[0].Length;
        var expected = new List<(long, long)> { (promptLen, 0) };
        for (int step = 1; step < 8; step++) expected.Add((1, promptLen + step - 1));
        Assert.Equal(expected, model.Calls);
    }

    [Fact]
    public void Seeded_sampling_is_reproducible()
    {
        var fx = GreedyFixture.Load("llama-tiny");
        using var model = Load("llama-tiny");
        var gen = new TextGenerator(model);
        var options = GreedyFixture.Options with { DoSample = true, Temperature = 2.0, TopK = 0, MaxNewTokens = 16, Seed = 1234 };
        var a = gen.Generate(fx.BatchUnpadded, options);
        var b = gen.Generate(fx.BatchUnpadded, options);
        var c = gen.Generate(fx.BatchUnpadded, options with { Seed = 99 });
        Assert.Equal(a.Sequences, b.Sequences);
        Assert.NotEqual(a.Sequences, c.Sequences);
        Assert.NotEqual(fx.BatchNew, a.NewTokens.Select(r => r.Take(8).ToArray()).ToArray());
    }

    [Fact]
    public void Top_k_1_sampling_equals_greedy()
    {
        var fx = GreedyFixture.Load("llama-tiny");
        using var model = Load("llama-tiny");
        var result = new TextGenerator(model).Generate(fx.BatchUnpadded, GreedyFixture.Options with { DoSample = true, TopK = 1, Temperature = 0.7, Seed = 7 });
        Assert.Equal(fx.BatchOutput, result.Sequences);
    }

    [Fact]
    public void Eos_stops_a_row_and_fills_it_with_pad_while_others_continue()
    {
        var fx = GreedyFixture.Load("llama-tiny");
        using var model = Load("llama-tiny");
        var gen = new TextGenerator(model);
        // Row 0 greedily emits 297 271 243 ...: with 243 as eos it stops after three tokens.
        var options = GreedyFixture.Options with { EosTokenIds = new[] { 243 } };
        var batch = gen.Generate(fx.BatchUnpadded, options);
        Assert.Equal(new[] { 297, 271, 243 }, batch.NewTokens[0]);
        Assert.Equal(fx.BatchPrompt[0].Concat(new[] { 297, 271, 243, 0, 0, 0, 0, 0 }), batch.Sequences[0]);
        Assert.Equal(fx.BatchOutput[1..], batch.Sequences[1..]);
        Assert.Equal(new[] { FinishReason.Eos, FinishReason.Length, FinishReason.Length }, batch.FinishReasons);

        // Alone, the row ends the whole generation at its eos.
        var single = gen.Generate(new[] { fx.SinglePrompt }, options);
        Assert.Equal(fx.SinglePrompt.Concat(new[] { 297, 271, 243 }), single.Sequences[0]);
    }

    static string FakeDecode(IReadOnlyList<int> ids) => string.Concat(ids.Select(i => $"t{i} "));

    [Fact]
    public void Stop_strings_end_a_row_when_they_end_in_its_newest_token()
    {
        var fx = GreedyFixture.Load("llama-tiny");
        using var model = Load("llama-tiny");
        var gen = new TextGenerator(model);
        // "243 t8" spans the third and fourth new tokens; "t226 t3" is in the prompt only and never fires.
        var options = GreedyFixture.Options with { StopStrings = new[] { "t226 t3", "243 t8" }, Decode = FakeDecode };
        var result = gen.Generate(new[] { fx.SinglePrompt }, options);
        Assert.Equal(new[] { 297, 271, 243, 8 }, result.NewTokens[0]);
        Assert.Equal(FinishReason.StopString, result.FinishReasons[0]);
        Assert.Equal("t297 t271 t243 t8 ", result.Texts![0]);

        var none = gen.Generate(new[] { fx.SinglePrompt }, options with { StopStrings = new[] { "t226 t3" } });
        Assert.Equal(fx.SingleNew, none.NewTokens[0]);
        Assert.Throws<PeftConfigException>(() => gen.Generate(new[] { fx.SinglePrompt }, options with { Decode = null }));
    }

    [Fact]
    public void Streaming_callback_receives_exactly_the_generated_ids_and_text()
    {
        var fx = GreedyFixture.Load("llama-tiny");
        using var model = Load("llama-tiny");
        var streamed = new List<GeneratedToken>();
        var options = GreedyFixture.Options with { EosTokenIds = new[] { 243 }, Decode = FakeDecode };
        var result = new TextGenerator(model).Generate(fx.BatchUnpadded, options, streamed.Add);
        for (int r = 0; r < 3; r++)
        {
            var mine = streamed.Where(t => t.Row == r).ToList();
            Assert.Equal(result.NewTokens[r], mine.Select(t => t.TokenId));
            Assert.Equal(Enumerable.Range(0, mine.Count), mine.Select(t => t.Step));
            Assert.Equal(result.Texts![r], string.Concat(mine.Select(t => t.TextDelta)));
        }
        Assert.Equal(3 + 8 + 8, streamed.Count);
    }

    [Fact]
    public void Max_new_tokens_is_respected()
    {
        var fx = GreedyFixture.Load("llama-tiny");
        using var model = Load("llama-tiny");
        var gen = new TextGenerator(model);
        var three = gen.Generate(fx.BatchUnpadded, GreedyFixture.Options with { MaxNewTokens = 3 });
        Assert.Equal(fx.BatchNew.Select(r => r[..3]).ToArray(), three.NewTokens);
        Assert.All(three.Sequences, s => Assert.Equal(fx.BatchPrompt[0].Length + 3, s.Length));
        var zero = gen.Generate(fx.BatchUnpadded, GreedyFixture.Options with { MaxNewTokens = 0 });
        Assert.Equal(fx.BatchPrompt, zero.Sequences);
    }

    [Fact]
    public void Decoding_leaves_no_tensor_alive()
    {
        var fx = GreedyFixture.Load("llama-tiny");
        using var model = Load("llama-tiny");
        var gen = new TextGenerator(model);
        var options = GreedyFixture.Options with { DoSample = true, TopP = 0.9, RepetitionPenalty = 1.3, Seed = 3 };
        gen.Generate(fx.BatchUnpadded, options with { MaxNewTokens = 2 });
        long before = DisposeScopeManager.Statistics.ThreadTotalLiveCount;
        gen.Generate(fx.BatchUnpadded, options with { MaxNewTokens = 40 });
        Assert.Equal(before, DisposeScopeManager.Statistics.ThreadTotalLiveCount);
    }

    [Fact]
    public void Bad_prompts_are_errors_that_name_the_fault()
    {
        using var model = Load("llama-tiny");
        var gen = new TextGenerator(model);
        var e = Assert.Throws<PeftSharpException>(() => gen.Generate(new[] { new[] { 5, 320 } }));
        Assert.Contains("320", e.Message);
        Assert.Throws<PeftSharpException>(() => gen.Generate(new[] { Array.Empty<int>() }));
        using var ids = tensor(new long[] { 5, 6, 7 }, new long[] { 1, 3 });
        using var rightPadded = tensor(new long[] { 1, 1, 0 }, new long[] { 1, 3 });
        Assert.Contains("left-padded", Assert.Throws<PeftSharpException>(() => gen.Generate(ids, rightPadded)).Message);
        Assert.Throws<PeftConfigException>(() => gen.Generate(new[] { new[] { 5 } }, new GenerationOptions { TopP = 0 }));
    }
}
