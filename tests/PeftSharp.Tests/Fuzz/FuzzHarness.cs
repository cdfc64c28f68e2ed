using System.Collections.Concurrent;
using System.Diagnostics;
using System.Text.Json.Nodes;

namespace PeftSharp.Tests.Fuzz;

/// <summary>
/// The one property every fuzz target checks: a mutated input gives a correct result or a clear PeftSharp error
/// (one line, naming the file when there is one), within a time and managed-memory budget; never another exception,
/// a hang or runaway allocation. Counts per target are written to $TMP/peftsharp-fuzz/TARGET.json for docs/reliability.md.
/// </summary>
public sealed class FuzzHarness(string target, TimeSpan timeBudget, long allocationBudget = 512L << 20)
{
    long _cases, _accepted, _rejected;
    readonly ConcurrentDictionary<string, int> _reasons = new();

    /// <summary>Runs one case. <paramref name="file"/>: the path a rejection must name (null: not checked).</summary>
    public void Case(string description, string? file, Action body)
    {
        Interlocked.Increment(ref _cases);
        long allocated = GC.GetAllocatedBytesForCurrentThread();
        var sw = Stopwatch.StartNew();
        try
        {
            body();
            Interlocked.Increment(ref _accepted);
        }
        catch (PeftSharpException e)
        {
            Interlocked.Increment(ref _rejected);
            if (string.IsNullOrWhiteSpace(e.Message) || e.Message.Contains('\n'))
                throw new Xunit.Sdk.XunitException($"[{target}] {description}: rejection is not one line: {e.Message}");
            if (file is not null && !e.Message.Contains(file, StringComparison.Ordinal) && e is PeftFormatException)
                throw new Xunit.Sdk.XunitException($"[{target}] {description}: rejection does not name {file}: {e.Message}");
            _reasons.AddOrUpdate(e.GetType().Name, 1, (_, n) => n + 1);
        }
        catch (Exception e)
        {
            throw new Xunit.Sdk.XunitException($"[{target}] {description}: crashed with {e.GetType().Name}: {e.Message}\n{e.StackTrace}");
        }
        if (sw.Elapsed > timeBudget)
            throw new Xunit.Sdk.XunitException($"[{target}] {description}: took {sw.ElapsedMilliseconds} ms (budget {timeBudget.TotalMilliseconds} ms)");
        long used = GC.GetAllocatedBytesForCurrentThread() - allocated;
        if (used > allocationBudget)
            throw new Xunit.Sdk.XunitException($"[{target}] {description}: allocated {used >> 20} MB (budget {allocationBudget >> 20} MB)");
    }

    /// <summary>
    /// Iterations for one generator: <paramref name="n"/> in CI, times PEFTSHARP_FUZZ_SOAK for a long local soak
    /// (CsCheck draws fresh seeds each run, so a soak explores cases CI has not seen).
    /// </summary>
    public static long Iter(long n) =>
        int.TryParse(Environment.GetEnvironmentVariable("PEFTSHARP_FUZZ_SOAK"), out var k) && k > 1 ? n * k : n;

    /// <summary>Asserts the suite exercised both outcomes, then records the counts.</summary>
    public void Report(long minRejected = 1)
    {
        Assert.True(_rejected >= minRejected, $"[{target}] only {_rejected} of {_cases} cases rejected: the mutations are too weak");
        var dir = Path.Combine(Path.GetTempPath(), "peftsharp-fuzz");
        Directory.CreateDirectory(dir);
        var json = new JsonObject
        {
            ["target"] = target, ["cases"] = _cases, ["accepted"] = _accepted, ["rejected_clearly"] = _rejected, ["crashes_or_hangs"] = 0,
            ["rejections_by_type"] = new JsonObject(_reasons.OrderBy(kv => kv.Key).Select(kv => KeyValuePair.Create(kv.Key, (JsonNode?)kv.Value))),
        };
        File.WriteAllText(Path.Combine(dir, target + ".json"), json.ToJsonString());
    }
}
