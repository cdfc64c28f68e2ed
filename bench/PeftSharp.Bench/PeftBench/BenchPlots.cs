using ScottPlot;

namespace PeftSharp.Bench.PeftBench;

/// <summary>
/// The report's plots, drawn headless from the results: accuracy against trainable parameters per base (with the
/// Pareto front), accuracy against model size per method, and step time and peak memory per method.
/// Accuracy is averaged over the tasks a base ran.
/// </summary>
public static class BenchPlots
{
    static readonly IPalette Palette = new ScottPlot.Palettes.Category20();

    public static void Draw(BenchReport report, string dir)
    {
        var ok = report.Rows.Where(r => r.Error is null).ToList();
        foreach (var b in report.Bases)
        {
            var rows = PerMethod(ok.Where(r => r.Base == b.Name)).ToList();
            if (rows.Count == 0) continue;
            AccuracyVsTrainable(rows, $"Accuracy vs trainable parameters — {b.Name} ({b.Parameters:N0} parameters)", Path.Combine(dir, $"accuracy-vs-trainable-{b.Name}.png"));
            Bars(rows.Select(r => (r.Method, r.StepMs)).ToList(), $"Training step time — {b.Name}", "ms / step", Path.Combine(dir, $"step-time-{b.Name}.png"));
            Bars(rows.Select(r => (r.Method, r.PeakMemoryMb)).ToList(), $"Peak training memory (RSS growth) — {b.Name}", "MB", Path.Combine(dir, $"memory-{b.Name}.png"));
        }
        AccuracyVsSize(report, ok, Path.Combine(dir, "accuracy-vs-size.png"));
    }

    /// <summary>One point per method: trainable parameters, accuracy averaged over tasks, step time and memory likewise.</summary>
    static IEnumerable<(string Method, long Trainable, double Accuracy, double StepMs, double PeakMemoryMb)> PerMethod(IEnumerable<MethodRow> rows) =>
        rows.GroupBy(r => r.Method).Select(g => (g.Key, g.First().Trainable, g.Average(r => r.Accuracy), g.Average(r => r.StepMs), g.Average(r => r.PeakMemoryMb)));

    static void LogX(Plot plot)
    {
        plot.Axes.Bottom.TickGenerator = new ScottPlot.TickGenerators.NumericAutomatic
        {
            MinorTickGenerator = new ScottPlot.TickGenerators.LogMinorTickGenerator(),
            IntegerTicksOnly = true,
            LabelFormatter = v => Math.Pow(10, v).ToString("N0"),
        };
    }

    static void AccuracyVsTrainable(IReadOnlyList<(string Method, long Trainable, double Accuracy, double StepMs, double PeakMemoryMb)> rows, string title, string path)
    {
        var plot = new Plot();
        for (int i = 0; i < rows.Count; i++)
        {
            var (method, trainable, acc, _, _) = rows[i];
            double x = Math.Log10(Math.Max(1, trainable));
            var point = plot.Add.Scatter(new[] { x }, new[] { 100 * acc });
            point.Color = Palette.GetColor(i);
            point.MarkerSize = 9;
            var label = plot.Add.Text(method, x, 100 * acc);
            label.LabelFontSize = 9;
            label.LabelFontColor = Palette.GetColor(i);
        }
        // The Pareto front: no other method is both smaller and more accurate.
        var front = rows.Where(a => !rows.Any(o => o.Trainable <= a.Trainable && o.Accuracy > a.Accuracy || o.Trainable < a.Trainable && o.Accuracy >= a.Accuracy))
            .OrderBy(r => r.Trainable).ToList();
        if (front.Count > 1)
        {
            var line = plot.Add.Scatter(front.Select(r => Math.Log10(Math.Max(1, r.Trainable))).ToArray(), front.Select(r => 100 * r.Accuracy).ToArray());
            line.Color = Colors.Black.WithAlpha(0.4);
            line.MarkerSize = 0;
            line.LinePattern = LinePattern.Dashed;
            line.LegendText = "Pareto front";
        }
        LogX(plot);
        // Labels name the points; room on the right for the longest one.
        var xs = rows.Select(r => Math.Log10(Math.Max(1, r.Trainable))).ToList();
        plot.Axes.SetLimitsX(xs.Min() - 0.2, xs.Max() + 0.6);
        plot.ShowLegend(Alignment.LowerRight);
        plot.Title(title);
        plot.XLabel("trainable parameters (log scale)");
        plot.YLabel("held-out exact-match accuracy (%)");
        plot.Axes.SetLimitsY(-5, 105);
        Save(plot, path, 1000, 650);
    }

    static void AccuracyVsSize(BenchReport report, IReadOnlyList<MethodRow> ok, string path)
    {
        var sizes = report.Bases.OrderBy(b => b.Parameters).ToList();
        if (sizes.Count < 2) return;
        var plot = new Plot();
        var methods = ok.Select(r => r.Method).Distinct().ToList();
        for (int i = 0; i < methods.Count; i++)
        {
            var points = sizes.Select(b => (b, rows: ok.Where(r => r.Method == methods[i] && r.Base == b.Name).ToList()))
                .Where(p => p.rows.Count > 0).ToList();
            if (points.Count == 0) continue;
            var line = plot.Add.Scatter(points.Select(p => Math.Log10(p.b.Parameters)).ToArray(), points.Select(p => 100 * p.rows.Average(r => r.Accuracy)).ToArray());
            line.Color = Palette.GetColor(i);
            line.LegendText = methods[i];
            line.MarkerSize = 6;
        }
        LogX(plot);
        plot.Title("Accuracy vs model size (mean over tasks)");
        plot.XLabel("base model parameters (log scale): " + string.Join(", ", sizes.Select(b => b.Name)));
        plot.YLabel("held-out exact-match accuracy (%)");
        plot.Axes.SetLimitsY(-5, 105);
        plot.ShowLegend(Alignment.UpperLeft);
        plot.Legend.FontSize = 9;
        Save(plot, path, 1100, 700);
    }

    static void Bars(IReadOnlyList<(string Label, double Value)> values, string title, string unit, string path)
    {
        var plot = new Plot();
        var bars = plot.Add.Bars(values.Select(v => v.Value).ToArray());
        for (int i = 0; i < bars.Bars.Count; i++) bars.Bars[i].FillColor = Palette.GetColor(i);
        plot.Axes.Bottom.SetTicks(Enumerable.Range(0, values.Count).Select(i => (double)i).ToArray(), values.Select(v => v.Label).ToArray());
        plot.Axes.Bottom.TickLabelStyle.Rotation = 50;
        plot.Axes.Bottom.TickLabelStyle.Alignment = Alignment.MiddleLeft;
        plot.Axes.Bottom.MinimumSize = 130;
        plot.Axes.Margins(bottom: 0);
        plot.Title(title);
        plot.YLabel(unit);
        Save(plot, path, 1000, 600);
    }

    static void Save(Plot plot, string path, int width, int height)
    {
        var tmp = path + ".tmp.png";
        plot.SavePng(tmp, width, height);
        File.Move(tmp, path, overwrite: true);
    }
}
