using ScottPlot;

namespace PeftSharp.Cli;

/// <summary>Draws loss.png (training loss per logged step, eval loss as markers) with ScottPlot; works headless.</summary>
public static class LossPlot
{
    public static void Save(string path, IReadOnlyList<(double Step, double Loss)> train, IReadOnlyList<(double Step, double Loss)> eval, string title)
    {
        var plot = new Plot();
        if (train.Count > 0)
        {
            var line = plot.Add.Scatter(train.Select(p => p.Step).ToArray(), train.Select(p => p.Loss).ToArray());
            line.LegendText = "train loss";
            line.MarkerSize = train.Count > 60 ? 0 : 4;
        }
        if (eval.Count > 0)
        {
            var points = plot.Add.Scatter(eval.Select(p => p.Step).ToArray(), eval.Select(p => p.Loss).ToArray());
            points.LegendText = "eval loss";
            points.LineWidth = 0;
            points.MarkerSize = 8;
        }
        plot.Title(title);
        plot.XLabel("step");
        plot.YLabel("loss");
        plot.ShowLegend(Alignment.UpperRight);
        var tmp = path + ".tmp.png";
        plot.SavePng(tmp, 800, 500);
        File.Move(tmp, path, overwrite: true);
    }
}
