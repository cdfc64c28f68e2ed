using System.Text.Json.Nodes;
using PeftSharp.Tests.Cli;
using PeftSharp.Tuners;

namespace PeftSharp.Tests.Bench;

/// <summary>
/// `peftbench --quick` on its smallest size as CI's smoke test of every method (the second quick size would double
/// CI's time): each registered method's benchmark rows, full fine-tuning, QLoRA and the AdapterFusion stage train
/// through `peft train`'s recipe path, and every column of every row is filled; the report (tables.md, plots) is drawn
/// from results.json.
/// </summary>
public class PeftBenchSmokeTests
{
    static readonly string[] Sizes = { "1m" };

    [Fact]
    public void Quick_run_gives_every_method_a_filled_row_at_each_size()
    {
        var dir = TestPaths.TempDir();
        var (code, output) = BenchSmokeTests.Bench("peftbench", "--quick", "--sizes", string.Join(',', Sizes), "--json", "--out", dir, "--cache", Path.Combine(dir, "cache"));
        Assert.True(code == 0, output);

        var results = JsonNode.Parse(File.ReadAllText(Path.Combine(dir, "results.json")))!;
        var rows = results["rows"]!.AsArray().Select(r => r!.AsObject()).ToList();
        var expected = PeftMethods.All.SelectMany(m => m.Bench).Where(e => e.Create is null).Select(e => e.Name)
            .Concat(new[] { "Full fine-tuning", "QLoRA (NF4)", "AdapterFusion" }).ToList();
        Assert.Contains("IA3", expected);
        foreach (var size in Sizes)
            foreach (var method in expected)
            {
                var row = rows.SingleOrDefault(r => (string?)r["method"] == method && (string?)r["base"] == size);
                Assert.True(row is not null, $"no row for {method} at {size}");
                Assert.Null(row!["error"]);
                Assert.True(row["trainable"]!.GetValue<long>() > 0, $"{method} at {size}: no trainable parameters");
                Assert.True(row["step_ms"]!.GetValue<double>() > 0 && row["tokens_per_second"]!.GetValue<double>() > 0, $"{method} at {size}: no timing");
                Assert.True(row["peak_memory_mb"] is not null && row["forward_vs_base"]!.GetValue<double>() > 0, $"{method} at {size}: no memory or latency");
                Assert.True(row["adapter_kb"]!.GetValue<double>() > 0, $"{method} at {size}: nothing saved");
                Assert.True(row["seconds_to90"] is not null || row["to90_note"] is not null, $"{method} at {size}: no time-to-90% entry");
                var acc = row["accuracy"]!.GetValue<double>();
                Assert.InRange(acc, 0, 1);
            }
        // The printed table has the same rows, every cell filled.
        var printed = JsonNode.Parse(output[output.IndexOf('{')..(output.LastIndexOf('}') + 1)])!;
        var table = printed["rows"]!.AsArray();
        Assert.Equal(rows.Count, table.Count);
        Assert.All(table, r => Assert.All(r!.AsObject(), cell => Assert.False(string.IsNullOrEmpty(cell.Value?.ToString()), $"empty {cell.Key}")));

        var tables = File.ReadAllText(Path.Combine(dir, "tables.md"));
        Assert.Contains("| Full fine-tuning |", tables);
        foreach (var plot in Sizes.SelectMany(s => new[] { $"accuracy-vs-trainable-{s}.png", $"step-time-{s}.png", $"memory-{s}.png" }))
            Assert.True(new FileInfo(Path.Combine(dir, plot)).Length > 1000, $"{plot} missing");

        // A size run in another process takes the rates this run chose (--lr-from) instead of sweeping again.
        var chosen = Path.Combine(dir, "chosen.json");
        var loraRow = rows.Single(r => (string?)r["method"] == "LoRA" && (string?)r["base"] == "1m");
        loraRow["lr"] = 0.00123;
        File.WriteAllText(chosen, results.ToJsonString());
        var next = Path.Combine(dir, "next");
        var (code2, output2) = BenchSmokeTests.Bench("peftbench", "--quick", "--sizes", "1m", "--methods", "lora", "--sweep", "3", "--steps", "4", "--held-out", "4", "--rows", "32",
            "--lr-from", chosen, "--out", next, "--cache", Path.Combine(dir, "cache"));
        Assert.True(code2 == 0, output2);
        var lora = JsonNode.Parse(File.ReadAllText(Path.Combine(next, "results.json")))!["rows"]!.AsArray().Single(r => (string?)r!["method"] == "LoRA")!;
        Assert.Equal(0.00123, lora["lr"]!.GetValue<double>(), 6);
        Assert.Single(lora["sweep"]!.AsArray());
        Assert.True(File.Exists(Path.Combine(next, "results.partial.json")));

        // --from measures time to 90 % against the combined report's full fine-tuning row, not the one a row's run had.
        var full = rows.Single(r => (string?)r["method"] == "Full fine-tuning" && (string?)r["base"] == "1m");
        full["accuracy"] = 0.5;
        loraRow["curve"] = new JsonArray(new JsonArray(1.5, 1.0, 0.2), new JsonArray(3.5, 0.9, 0.46));
        loraRow["seconds_to90"] = 1.5;
        var edited = Path.Combine(dir, "edited.json");
        File.WriteAllText(edited, results.ToJsonString());
        var combined = Path.Combine(dir, "combined");
        var (code3, output3) = BenchSmokeTests.Bench("peftbench", "--from", edited, "--out", combined);
        Assert.True(code3 == 0, output3);
        var remeasured = JsonNode.Parse(File.ReadAllText(Path.Combine(combined, "results.json")))!["rows"]!.AsArray().Single(r => (string?)r!["method"] == "LoRA")!;
        Assert.Equal(3.5, remeasured["seconds_to90"]!.GetValue<double>());

        var (bad, message) = BenchSmokeTests.Bench("peftbench", "--quick", "--sizes", "1m", "--lr-from", Path.Combine(dir, "missing.json"), "--out", next);
        Assert.NotEqual(0, bad);
        Assert.Contains("--lr-from", message);
        Assert.Contains("missing.json", message);
    }
}
