using System.Text.Json;
using System.Text.Json.Nodes;
using PeftSharp.Inference.Serving;
using PeftSharp.Tests.Cli;
using PeftSharp.Tests.Tuners.AdapterHub;
using static PeftSharp.Tests.Serving.ServingTestHost;

namespace PeftSharp.Tests.Serving;

/// <summary>
/// `peft serve --compose fused="Fuse[a,b]" --fusion DIR`: a composition served under its own name gives what
/// `peft generate --compose` gives, next to its member adapters and the base, each as it is alone.
/// </summary>
public class ServingCompositionTests
{
    static readonly string Fixture = AdapterHubFixtureTests.Case("llama-tiny", "fuse");
    static readonly (string, string)[] Members = { ("a", Path.Combine(Fixture, "a")), ("b", Path.Combine(Fixture, "b")) };

    static int[] Generate(int[] prompt, int maxNew, params string[] extra)
    {
        var (code, stdout, stderr) = CliRunner.Run(new[] { "generate", "--model", TestPaths.Model("llama-tiny"), "--input-ids", string.Join(' ', prompt),
            "--max-new-tokens", maxNew.ToString(), "--json" }.Concat(extra).ToArray());
        Assert.True(code == 0, stderr);
        return JsonDocument.Parse(stdout).RootElement.GetProperty("rows")[0].GetProperty("new_ids").EnumerateArray().Select(x => x.GetInt32()).ToArray();
    }

    static JsonObject Completion(string model, int[] prompt, int maxTokens) => new()
    {
        ["model"] = model, ["prompt"] = Json(prompt), ["max_tokens"] = maxTokens, ["temperature"] = 0, ["return_token_ids"] = true,
    };

    [Fact]
    public async Task A_served_fusion_gives_generate_compose_ids_next_to_its_members_and_the_base()
    {
        int[] prompt = [1, 5, 9, 14];
        var options = new ServingOptions { Compositions = new[] { ("fused", "Fuse[a,b]"), ("stacked", "Stack[a,b]") }, FusionDirs = new[] { Path.Combine(Fixture, "fusion") } };
        await using var host = await StartAsync(options, adapters: Members);
        Assert.Equal(new[] { "a", "b", "fused", "stacked" }, host.Engine.AdapterNames);
        var models = new[] { "fused", "a", "stacked", "llama-tiny", "fused", "b" };
        var replies = await Task.WhenAll(models.Select(m => host.PostAsync("/v1/completions", Completion(m, prompt, 6))));

        string[] adapterArgs = ["--adapter", $"a={Members[0].Item2}", "--adapter", $"b={Members[1].Item2}"];
        var expected = new Dictionary<string, int[]>
        {
            ["fused"] = Generate(prompt, 6, [.. adapterArgs, "--compose", "Fuse[a,b]", "--fusion", Path.Combine(Fixture, "fusion")]),
            ["stacked"] = Generate(prompt, 6, [.. adapterArgs, "--compose", "Stack[a,b]"]),
            ["a"] = Generate(prompt, 6, "--adapter", Members[0].Item2),
            ["b"] = Generate(prompt, 6, "--adapter", Members[1].Item2),
            ["llama-tiny"] = Generate(prompt, 6),
        };
        Assert.NotEqual(expected["fused"], expected["llama-tiny"]);
        for (int i = 0; i < models.Length; i++)
        {
            Assert.Equal(200, replies[i].Status);
            Assert.Equal(expected[models[i]], Ints(replies[i].Body["choices"]![0]!["token_ids"]));
        }
        // The members stay resident: unloading one the composition needs is refused.
        var (status, body) = await host.PostAsync("/v1/unload_lora_adapter", new JsonObject { ["lora_name"] = "a" });
        Assert.Equal(409, status);
        Assert.Contains("part of a composition", body.ToJsonString());
    }

    [Theory]
    [InlineData("Fuse[a,c]", "no adapter 'c'")]
    [InlineData("Fuse[a,b", "expected ',' or ']'")]
    public void A_composition_over_missing_adapters_is_refused_at_start(string compose, string expected)
    {
        var e = Assert.ThrowsAny<PeftSharpException>(() => ServingEngine.FromFolder(TestPaths.Model("llama-tiny"),
            new ServingOptions { Compositions = new[] { ("fused", compose) } }, Members));
        Assert.Contains(expected, e.Message);
    }

    [Fact]
    public void Serve_takes_compose_as_name_equals_composition()
    {
        var (code, _, stderr) = CliRunner.Run("serve", "--model", TestPaths.Model("llama-tiny"), "--adapter", $"a={Members[0].Item2}", "--compose", "Fuse[a,b]", "--port", "0");
        Assert.Equal(1, code);
        Assert.Contains("--compose 'Fuse[a,b]' must be NAME=COMPOSITION", stderr);
    }
}
