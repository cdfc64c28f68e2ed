using System.Text.Json.Nodes;
using PeftSharp.Inference;
using PeftSharp.Inference.Serving;
using PeftSharp.Models;
using PeftSharp.Tests.Inference;
using PeftSharp.Tuners;
using static PeftSharp.Tests.Serving.ServingTestHost;

namespace PeftSharp.Tests.Serving;

/// <summary>
/// Adapters that cannot share the mixed LoRA batch (prompt tuning, prefix tuning, LLaMA-Adapter, AdapterHub
/// bottleneck) served over HTTP next to LoRA requests: each request gets what TextGenerator gives alone.
/// </summary>
public class ServingSoloAdapterTests
{
    static readonly string ModelDir = TestPaths.Model("llama-tiny");
    static string Adapter(string name) => TestPaths.Data("adapters", "llama-tiny", name);

    static readonly (string Name, string Dir)[] Adapters =
    {
        ("a", Multi("a")), ("b", Multi("b")),
        ("pt", Adapter("prompt_tuning")), ("prefix", Adapter("prefix_tuning")), ("llama-adapter", Adapter("adaption_prompt")),
        ("hub", TestPaths.Data("adapterhub", "llama-tiny", "seq_bn")),
    };

    /// <summary>TextGenerator on a fresh model with only that adapter (through the PeftModel, as <c>peft generate</c>), or the base model.</summary>
    static int[] Alone(int[] prompt, string? adapterDir, int maxNew)
    {
        using var model = AutoModel.FromPretrained(ModelDir);
        ILanguageModel target = adapterDir is null ? model : PeftModel.FromPretrained(model, adapterDir, "x");
        var options = new GenerationOptions { MaxNewTokens = maxNew }.WithGenerationConfig(ModelDir);
        return new TextGenerator(target).Generate(new[] { prompt }, options).NewTokens[0];
    }

    static JsonObject Completion(string model, IEnumerable<int> prompt, int maxTokens) => new()
    {
        ["model"] = model, ["prompt"] = Json(prompt), ["max_tokens"] = maxTokens, ["temperature"] = 0, ["return_token_ids"] = true,
    };

    [Fact]
    public async Task PromptAndAdapterFamilyRequestsServedWithLoraEachGetWhatTheyGetAlone()
    {
        var rng = new Random(5);
        var models = new[] { "pt", "a", "prefix", "hub", "b", "llama-adapter", "llama-tiny" };
        // Two jobs share adapter and prompt length (one group), others differ; lengths and max_tokens vary so rows join and leave.
        var jobs = Enumerable.Range(0, 14).Select(i => (Model: models[i % models.Length],
            Prompt: Enumerable.Range(0, i < 7 ? 6 : 3 + rng.Next(10)).Select(_ => 3 + rng.Next(300)).ToArray(), Max: 3 + rng.Next(8))).ToList();
        jobs[7] = (jobs[0].Model, jobs[0].Prompt.Reverse().ToArray(), jobs[0].Max + 2);
        await using var host = await StartAsync(new ServingOptions { MaxBatchSize = 8 }, adapters: Adapters);
        Assert.Equal(new[] { "a", "b", "pt", "prefix", "llama-adapter", "hub" }, host.Engine.AdapterNames);

        var together = await Task.WhenAll(jobs.Select(j => host.PostAsync("/v1/completions", Completion(j.Model, j.Prompt, j.Max))));
        var dirs = Adapters.ToDictionary(a => a.Name, a => a.Dir);
        for (int i = 0; i < jobs.Count; i++)
        {
            Assert.Equal(200, together[i].Status);
            var expected = Alone(jobs[i].Prompt, dirs.GetValueOrDefault(jobs[i].Model), jobs[i].Max);
            Assert.Equal(expected, Ints(together[i].Body["choices"]![0]!["token_ids"]));
        }
        Assert.Equal(0, host.Engine.Metrics().BatchSize);
    }

    [Theory]
    [InlineData("prompt_tuning")]
    [InlineData("prefix_tuning")]
    public async Task StreamedPromptFamilyGreedyEqualsPeftGreedyFixture(string fixture)
    {
        var fx = GreedyFixture.FromFolder(Adapter(fixture));
        await using var host = await StartAsync(adapters: new[] { ("x", Adapter(fixture)), ("a", Multi("a")) });
        var body = Completion("x", fx.SinglePrompt, fx.SingleNew.Length);
        var lora = host.PostAsync("/v1/completions", Completion("a", fx.SinglePrompt, 6));
        var (events, done) = await host.StreamAsync("/v1/completions", body);
        Assert.True(done);
        Assert.Equal(fx.SingleNew, events.SelectMany(e => e["choices"]![0]!["token_ids"] is JsonArray t ? Ints(t) : Array.Empty<int>()).ToArray());
        Assert.Equal(200, (await lora).Status);
    }
}
