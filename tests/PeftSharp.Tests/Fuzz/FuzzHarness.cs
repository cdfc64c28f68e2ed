using System.Collections.Concurrent;
using System.Diagnostics;
using System.Text.Json.Nodes;
using CsCheck;

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
        var cpu = ThreadCpuTime();
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
        // The budget is CPU time of the case's thread, so a busy shared machine does not fail a case that is merely
        // waiting for a core; a case blocked without computing is still caught by 10× the budget in wall time.
        var spent = ThreadCpuTime() - cpu;
        if (spent > timeBudget || sw.Elapsed > timeBudget * 10)
            throw new Xunit.Sdk.XunitException($"[{target}] {description}: took {spent.TotalMilliseconds:F0} ms of CPU, {sw.ElapsedMilliseconds} ms of wall time (budget {timeBudget.TotalMilliseconds} ms of CPU)");
        long used = GC.GetAllocatedBytesForCurrentThread() - allocated;
        if (used > allocationBudget)
            throw new Xunit.Sdk.XunitException($"[{target}] {description}: allocated {used >> 20} MB (budget {allocationBudget >> 20} MB)");
    }

    [System.Runtime.InteropServices.DllImport("libc", EntryPoint = "clock_gettime")] static extern int ClockGetTime(int clock, out Timespec ts);
    struct Timespec { public long Seconds, Nanoseconds; }
    static readonly Stopwatch Wall = Stopwatch.StartNew();

    /// <summary>CPU time of the calling thread (Linux CLOCK_THREAD_CPUTIME_ID), or wall time where that is unavailable.</summary>
    static TimeSpan ThreadCpuTime()
    {
        if (OperatingSystem.IsLinux() && ClockGetTime(3, out var ts) == 0) return TimeSpan.FromTicks(ts.Seconds * TimeSpan.TicksPerSecond + ts.Nanoseconds / 100);
        return Wall.Elapsed;
    }

    /// <summary>PEFTSHARP_FUZZ_SOAK when it asks for a soak (an integer above 1), else null (CI).</summary>
    public static int? Soak => int.TryParse(Environment.GetEnvironmentVariable("PEFTSHARP_FUZZ_SOAK"), out var k) && k > 1 ? k : null;

    /// <summary>Iterations for one generator: <paramref name="n"/> in CI, times PEFTSHARP_FUZZ_SOAK for a long local soak.</summary>
    public static long Iter(long n) => Soak is { } k ? n * k : n;

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

/// <summary>
/// How the fuzz targets draw their cases. In CI the cases are the first N draws of one fixed PCG stream, the same every
/// run, so CI never goes red on a lucky draw: every case it runs was green when it was committed. A soak
/// (PEFTSHARP_FUZZ_SOAK=K) draws K×N fresh random cases through CsCheck's Sample, which shrinks a failure and prints
/// its seed; each bug a soak finds gets a deterministic regression test and a fix.
/// </summary>
public static class FuzzDraws
{
    /// <summary>The fixed stream CI draws from.</summary>
    const uint Stream = 17;
    const ulong Seed = 0x5EED_F022_2026UL;

    public static void Fuzz<T>(this Gen<T> gen, Action<T> body, long iter)
    {
        if (FuzzHarness.Soak is not null) { gen.Sample(body, iter: iter, threads: 1); return; }
        var pcg = new PCG(Stream, Seed);
        for (long i = 0; i < iter; i++)
        {
            var value = gen.Generate(pcg, null, out _);
            try { body(value); }
            catch (Exception e) { throw new Xunit.Sdk.XunitException($"fixed CI case {i} of {iter} ({Check.Print(value)}) failed: {e.Message}", e); }
        }
    }

    public static void Fuzz<T1, T2>(this Gen<(T1, T2)> gen, Action<T1, T2> body, long iter) => gen.Fuzz(t => body(t.Item1, t.Item2), iter);
    public static void Fuzz<T1, T2, T3>(this Gen<(T1, T2, T3)> gen, Action<T1, T2, T3> body, long iter) => gen.Fuzz(t => body(t.Item1, t.Item2, t.Item3), iter);
    public static void Fuzz<T1, T2, T3, T4>(this Gen<(T1, T2, T3, T4)> gen, Action<T1, T2, T3, T4> body, long iter) =>
        gen.Fuzz(t => body(t.Item1, t.Item2, t.Item3, t.Item4), iter);
}
