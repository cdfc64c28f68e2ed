using System.Text.Json.Nodes;
using PeftSharp.Runtime;
using PeftSharp.Training;

namespace PeftSharp.Cli;

/// <summary>
/// The console side of a training run: on a terminal a progress bar (steps, rate, ETA, loss, lr, tokens/s), otherwise
/// a line per log step; the log entries, loss.png and the closing summary. With --json it prints nothing while training.
/// </summary>
public sealed class TrainingReporter
{
    readonly TextWriter _out;
    readonly bool _quiet, _live;
    readonly string _title;
    readonly List<(double, double)> _train = new(), _eval = new();
    long _tokens;
    IProgressStage? _bar;

    public TrainingReporter(TextWriter output, bool json, string title)
    {
        _out = output; _quiet = json; _title = title;
        _live = !json && ConsoleProgress.Live;
    }

    public void Attach(Trainer trainer)
    {
        trainer.StepCompleted += OnStep;
        trainer.Logged += OnLog;
    }

    void OnStep(StepRecord s)
    {
        _tokens += s.Tokens;
        if (!_live) return;
        double secs = Math.Max(1e-9, s.Elapsed.TotalSeconds);
        _bar ??= PeftProgress.Begin("training", s.TotalSteps, "steps");
        _bar.Report(s.Step, $"loss {s.Loss:F4}  lr {s.LearningRate:0.00e+0}  {_tokens / secs:F0} tok/s");
    }

    void OnLog(JsonObject e)
    {
        int step = e["step"]!.GetValue<int>();
        if (e["loss"] is { } loss) _train.Add((step, loss.GetValue<double>()));
        if (e["eval_loss"] is { } el) _eval.Add((step, el.GetValue<double>()));
        if (_quiet) return;
        if (_live && e["loss"] is not null) return; // the live line shows it
        _out.WriteLine(e["loss"] is not null
            ? $"step {step}/{e["total_steps"]}  loss {e["loss"]!.GetValue<double>():F4}  lr {e["learning_rate"]!.GetValue<double>():0.00e+0}  grad_norm {e["grad_norm"]!.GetValue<double>():F3}"
            : $"eval at step {step}: loss {e["eval_loss"]!.GetValue<double>():F4}  " +
              (e["eval_accuracy"] is { } acc ? $"accuracy {acc.GetValue<double>():P1}" : $"perplexity {e["eval_perplexity"]!.GetValue<double>():F3}"));
    }

    /// <summary>Closes the progress bar (training ended, or stopped).</summary>
    public void EndBar()
    {
        _bar?.Dispose();
        _bar = null;
    }

    /// <summary>Writes loss.png into <paramref name="dir"/>; returns its path, or null when nothing was logged or drawing failed.</summary>
    public string? SavePlot(string dir)
    {
        if (_train.Count == 0) return null;
        var path = Path.Combine(dir, "loss.png");
        try { LossPlot.Save(path, _train, _eval, _title); return path; }
        catch (Exception e) when (e is DllNotFoundException or TypeInitializationException or IOException)
        {
            if (!_quiet) _out.WriteLine($"note: loss.png was not drawn ({e.GetBaseException().Message})");
            return null;
        }
    }

    /// <summary>LLaMA-Factory's plot_loss files: training_loss.png and, when evaluated, training_eval_loss.png.</summary>
    public void SaveLlamaFactoryPlots(string dir)
    {
        try
        {
            if (_train.Count > 0) LossPlot.Save(Path.Combine(dir, "training_loss.png"), _train, [], _title + " · loss");
            if (_eval.Count > 0) LossPlot.Save(Path.Combine(dir, "training_eval_loss.png"), _eval, [], _title + " · eval_loss");
        }
        catch (Exception e) when (e is DllNotFoundException or TypeInitializationException or IOException)
        {
            if (!_quiet) _out.WriteLine($"note: training_loss.png was not drawn ({e.GetBaseException().Message})");
        }
    }

    public sealed record Summary(string OutputDir, int Steps, double FinalLoss, double Seconds, double TokensPerSecond, long TrainableParams,
        long AllParams, long? PeakRssBytes, long ArtifactBytes, string? LossPlot, double? EvalLoss, double? EvalAccuracy);

    public Summary Finish(TrainResult r, TrainingTarget target, string outputDir, string? plot, EvalResult? eval)
    {
        EndBar();
        var (trainable, all) = target.ParameterCounts();
        long size = Directory.Exists(outputDir)
            ? PeftSharp.IO.FileSizes.OfFolder(outputDir, "*.safetensors") : 0;
        return new Summary(outputDir, r.GlobalStep, r.TrainLoss, r.Elapsed.TotalSeconds, r.Tokens / Math.Max(1e-9, r.Elapsed.TotalSeconds),
            trainable, all, ProcessMemory.PeakRss(), size, plot, eval?.Loss, eval?.Accuracy);
    }

    public void Print(Summary s)
    {
        if (_quiet) return;
        _out.WriteLine($"done: {s.Steps} steps in {s.Seconds:F1} s, {s.TokensPerSecond:F0} tokens/s, final loss {s.FinalLoss:F4}");
        _out.WriteLine($"  parameters: {s.TrainableParams:N0} trainable of {s.AllParams:N0} ({100.0 * s.TrainableParams / Math.Max(1, s.AllParams):F2}%)");
        if (s.EvalLoss is { } el) _out.WriteLine($"  eval loss {el:F4}" + (s.EvalAccuracy is { } a ? $", accuracy {a:P1}" : ""));
        if (s.PeakRssBytes is { } rss) _out.WriteLine($"  peak memory (RSS): {rss / 1048576.0:F0} MB");
        _out.WriteLine($"  saved to {s.OutputDir} ({s.ArtifactBytes / 1024.0:F1} KB of weights)" + (s.LossPlot is null ? "" : $", loss curve {s.LossPlot}"));
    }
}
