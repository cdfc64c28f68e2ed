using System.Text.Json.Nodes;
using PeftSharp.Tests.Cli;

namespace PeftSharp.Tests.Bench;

/// <summary>
/// Benchmarks that CI does not otherwise run, at a toy size, so a refactor that breaks one is caught before someone
/// needs its figures (inspect-merge once failed on a cast the LoRA variant refactor made stale).
/// </summary>
public class BenchSmokeTests
{
    /// <summary>`dotnet run -c Release --project bench/PeftSharp.Bench -- ARGS` from the repository root.</summary>
    internal static (int Code, string Output) Bench(params string[] args) =>
        PackagingTests.Dotnet(PackagingTests.RepoRoot, null, new[] { "run", "-c", "Release", "--project", "bench/PeftSharp.Bench", "--" }.Concat(args).ToArray());

    [Fact]
    public void Inspect_merge_reports_the_factor_rank_of_every_module_at_a_toy_size()
    {
        var (code, output) = Bench("inspect-merge", "--layers", "1", "--hidden", "64", "--r", "4", "--threads", "1", "--json");
        Assert.True(code == 0, output);
        var json = JsonNode.Parse(output[output.IndexOf('{')..(output.LastIndexOf('}') + 1)])!;
        var details = json["rows"]!.AsArray().Select(r => (string?)r!["detail"] ?? "").ToList();
        Assert.Contains(details, d => d.Contains("4 modules, ΔW ranks 4-4 (r=4)"));
        Assert.Contains(details, d => d.Contains("rank 4;"));
    }
}
