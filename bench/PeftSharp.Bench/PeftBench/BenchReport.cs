using System.Globalization;
using System.Text;
using System.Text.Json;
using System.Text.Json.Serialization;

namespace PeftSharp.Bench.PeftBench;

public sealed record BaseInfo(string Name, long Parameters, string Origin);

/// <summary>One learning rate of a method's sweep (first seed), kept in the results.</summary>
public sealed record SweepPoint(double Lr, double ValAccuracy, double TestAccuracy, double TestLoss, string? Error);

/// <summary>A row of the report: one method on one base and task, at its best learning rate, over the seeds.</summary>
public sealed record MethodRow
{
    public required string Method { get; init; }
    public required string Family { get; init; }
    public required string Base { get; init; }
    public required string Task { get; init; }
    public double Lr { get; init; }
    public long Trainable { get; init; }
    public double TrainablePercent { get; init; }
    public long? ChangedByMerge { get; init; }
    public long? RankDeltaW { get; init; }
    public bool FullRank { get; init; }
    public double PeakMemoryMb { get; init; }
    public double StepMs { get; init; }
    public double TokensPerSecond { get; init; }
    /// <summary>Training seconds until validation accuracy first reached 90 % of full fine-tuning's; null: see <see cref="To90Note"/>.</summary>
    public double? SecondsTo90 { get; init; }
    public string? To90Note { get; init; }
    public double? ForwardVsBase { get; init; }
    public double? MergedVsBase { get; init; }
    public double AdapterKb { get; init; }
    public double Accuracy { get; init; }
    public double AccuracySpread { get; init; }
    public double TestLoss { get; init; }
    public double BaseAccuracy { get; init; }
    public int Seeds { get; init; }
    public List<double[]> Curve { get; init; } = new();
    public List<SweepPoint> Sweep { get; init; } = new();
    public string? Error { get; init; }

    public static readonly string[] Columns =
    {
        "method", "family", "base", "task", "lr", "trainable", "trainable %", "changed by merge", "rank ΔW", "peak MB", "ms/step", "tokens/s",
        "s to 90% of full", "forward vs base", "merged vs base", "adapter KB", "accuracy", "± spread", "test loss", "seeds",
    };

    public static MethodRow From(BenchMethod m, BenchBase b, BenchTask task, IReadOnlyList<RunResult> runs, IReadOnlyList<RunResult> sweep, double baseAcc, double? fullAcc)
    {
        var best = runs[0];
        var ok = runs.Where(r => r.Error is null).ToList();
        var accs = ok.Select(r => r.TestAccuracy).ToList();
        double mean = accs.Count == 0 ? 0 : accs.Average();
        double spread = accs.Count < 2 ? 0 : Math.Sqrt(accs.Sum(a => (a - mean) * (a - mean)) / (accs.Count - 1));
        // Full fine-tuning's own row measures time to 90 % of its own final accuracy.
        var (to90, note) = TimeTo90(best.Curve, best.Error, fullAcc ?? best.ValAccuracy);
        return new MethodRow
        {
            Method = m.Name, Family = m.Family, Base = b.Name, Task = task.Name, Lr = best.Lr, Trainable = best.Trainable,
            TrainablePercent = b.Parameters == 0 ? 0 : 100.0 * best.Trainable / b.Parameters,
            ChangedByMerge = best.ChangedByMerge, RankDeltaW = best.RankDeltaW, FullRank = m.IsFull,
            PeakMemoryMb = best.PeakMemoryMb, StepMs = best.StepMs, TokensPerSecond = best.TokensPerSecond,
            SecondsTo90 = to90, To90Note = note, ForwardVsBase = best.ForwardVsBase, MergedVsBase = best.MergedVsBase,
            AdapterKb = best.AdapterBytes / 1024.0, Accuracy = mean, AccuracySpread = spread, TestLoss = ok.Count == 0 ? double.NaN : ok.Average(r => r.TestLoss),
            BaseAccuracy = baseAcc, Seeds = ok.Count, Curve = best.Curve,
            Sweep = sweep.Select(s => new SweepPoint(s.Lr, s.ValAccuracy, s.TestAccuracy, s.TestLoss, s.Error)).ToList(),
            Error = best.Error,
        };
    }

    /// <summary>Training seconds until the curve's validation accuracy first reached 90 % of <paramref name="reference"/>, or why not.</summary>
    public static (double? Seconds, string? Note) TimeTo90(IReadOnlyList<double[]> curve, string? error, double reference)
    {
        if (error is not null) return (null, "failed");
        if (reference <= 0) return (null, "n/a");
        var hit = curve.FirstOrDefault(c => c[2] >= 0.9 * reference);
        return hit is null ? (null, "never") : (hit[0], null);
    }

    static string F(double v, string f) => v.ToString(f, CultureInfo.InvariantCulture);

    /// <summary>↓ or ↑ when the chosen rate is the lowest or highest of a 3-point sweep: the best may lie beyond it.</summary>
    string SweepEdge => Sweep.Count < 3 || Error is not null ? "" : Lr <= Sweep.Min(p => p.Lr) ? "↓" : Lr >= Sweep.Max(p => p.Lr) ? "↑" : "";

    public object[] Cells() => new object[]
    {
        Method, Family, Base, Task, F(Lr, "G3") + SweepEdge, Trainable.ToString("N0", CultureInfo.InvariantCulture), F(TrainablePercent, "G3"),
        ChangedByMerge?.ToString("N0", CultureInfo.InvariantCulture) ?? "-",
        FullRank ? "full" : RankDeltaW?.ToString(CultureInfo.InvariantCulture) ?? "-",
        F(PeakMemoryMb, "F0"), F(StepMs, "F1"), F(TokensPerSecond, "F0"),
        SecondsTo90 is { } s ? F(s, "F1") : To90Note ?? "-",
        ForwardVsBase is { } fw ? F(fw, "F2") + "x" : "-", MergedVsBase is { } mg ? F(mg, "F2") + "x" : "-",
        F(AdapterKb, "F1"), Error is null ? F(100 * Accuracy, "F1") + "%" : "failed", F(100 * AccuracySpread, "F1"),
        double.IsFinite(TestLoss) ? F(TestLoss, "F3") : "-", Seeds,
    };
}

/// <summary>Everything one peftbench run produced: the source of tables.md and the plots.</summary>
public sealed class BenchReport
{
    public string Command { get; set; } = "";
    public string Cpu { get; set; } = "";
    public int Threads { get; set; }
    public int Seeds { get; set; }
    public bool Quick { get; set; }
    public double WallSeconds { get; set; }
    public Dictionary<string, string> Versions { get; set; } = new();
    public List<BaseInfo> Bases { get; set; } = new();
    public List<MethodRow> Rows { get; set; } = new();

    /// <summary>
    /// Several runs as one report (a run that redid some methods, or added sizes): a later report's rows replace the
    /// same method, base and task, in the first report's order; commands and times are listed together.
    /// </summary>
    public static BenchReport Combine(IReadOnlyList<BenchReport> reports)
    {
        var all = reports[0];
        foreach (var next in reports.Skip(1))
        {
            foreach (var row in next.Rows)
            {
                int at = all.Rows.FindIndex(r => r.Method == row.Method && r.Base == row.Base && r.Task == row.Task);
                if (at >= 0) all.Rows[at] = row; else all.Rows.Add(row);
            }
            foreach (var b in next.Bases.Where(b => !all.Bases.Any(x => x.Name == b.Name))) all.Bases.Add(b);
            all.Command += $"` + `{next.Command}";
            all.WallSeconds += next.WallSeconds;
        }
        // Rows of several runs in the catalogue's order, as one run would have written them.
        int Order(MethodRow r) => BenchMethods.All.Select((m, i) => (m, i)).FirstOrDefault(x => x.m.Name == r.Method, (null!, int.MaxValue)).Item2;
        var sorted = all.Rows.OrderBy(r => all.Bases.FindIndex(b => b.Name == r.Base)).ThenBy(r => r.Task).ThenBy(Order).ToList();
        // A row rerun without full fine-tuning in its run measured time to 90 % of itself: measure against the full row here.
        all.Rows.Clear();
        all.Rows.AddRange(sorted.Select(r =>
        {
            var full = sorted.FirstOrDefault(f => f.FullRank && f.Base == r.Base && f.Task == r.Task);
            if (full is null || r.FullRank) return r;
            var (seconds, note) = MethodRow.TimeTo90(r.Curve, r.Error, full.Accuracy);
            return r with { SecondsTo90 = seconds, To90Note = note };
        }));
        return all;
    }

    public static readonly JsonSerializerOptions JsonOptions = new()
    {
        WriteIndented = true, PropertyNamingPolicy = JsonNamingPolicy.SnakeCaseLower,
        NumberHandling = JsonNumberHandling.AllowNamedFloatingPointLiterals,
    };
}

/// <summary>tables.md (one table per base and task) and the PNG plots, both made from a <see cref="BenchReport"/>.</summary>
public static class BenchReportWriter
{
    public static void Write(BenchReport report, string dir)
    {
        Directory.CreateDirectory(dir);
        File.WriteAllText(Path.Combine(dir, "tables.md"), Tables(report));
        BenchPlots.Draw(report, dir);
    }

    public static string Tables(BenchReport report)
    {
        var sb = new StringBuilder();
        sb.AppendLine($"Command: `dotnet run -c Release --project bench/PeftSharp.Bench -- {report.Command}` — {report.WallSeconds / 60:F1} min on {report.Cpu}, {report.Threads} threads, {report.Seeds} seed(s).");
        sb.AppendLine($"Versions: {string.Join(", ", report.Versions.Select(kv => $"{kv.Key} {kv.Value}"))}.");
        foreach (var b in report.Bases)
            foreach (var task in report.Rows.Where(r => r.Base == b.Name).Select(r => r.Task).Distinct())
            {
                var rows = report.Rows.Where(r => r.Base == b.Name && r.Task == task).ToList();
                sb.AppendLine();
                sb.AppendLine($"#### {b.Name} ({b.Parameters:N0} parameters; {b.Origin}) — task `{task}` (base model: {100 * rows[0].BaseAccuracy:F0}% accuracy)");
                sb.AppendLine();
                var cols = MethodRow.Columns.Where(c => c is not ("base" or "task")).ToArray();
                sb.AppendLine("| " + string.Join(" | ", cols) + " |");
                sb.AppendLine("|" + string.Concat(cols.Select(_ => "---|")));
                foreach (var r in rows)
                {
                    var cells = r.Cells().Where((_, i) => MethodRow.Columns[i] is not ("base" or "task"));
                    sb.AppendLine("| " + string.Join(" | ", cells) + " |");
                }
            }
        return sb.ToString();
    }
}
