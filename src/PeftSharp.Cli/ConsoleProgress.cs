using System.Collections.Concurrent;
using System.Diagnostics;
using PeftSharp.Runtime;
using Spectre.Console;
using Spectre.Console.Rendering;

namespace PeftSharp.Cli;

/// <summary>
/// How the CLI shows the library's progress stages (<see cref="PeftProgress"/>): Spectre.Console bars on a terminal,
/// occasional plain lines on stderr when output is redirected, nothing with --json or when run in process (tests).
/// </summary>
public static class ConsoleProgress
{
    /// <summary>True while stdout is a terminal and bars are drawn: commands then write through Spectre.</summary>
    public static bool Live { get; private set; }

    /// <summary>Picks the sink for one command run and, on a terminal, the writer that keeps text above the bars.</summary>
    public static IDisposable Install(bool json, ref TextWriter stdout, TextWriter stderr)
    {
        bool console = ReferenceEquals(stdout, Console.Out);
        if (json || !console) return PeftProgress.Use(null);
        if (!Console.IsOutputRedirected && AnsiConsole.Profile.Capabilities.Interactive)
        {
            Live = true;
            stdout = new AnsiConsoleWriter();
            return new Both(PeftProgress.Use(new SpectreProgressSink()), () => Live = false);
        }
        return PeftProgress.Use(new PlainProgressSink(stderr));
    }

    sealed class Both(IDisposable inner, Action after) : IDisposable
    {
        public void Dispose() { inner.Dispose(); after(); }
    }

    internal static string Rate(double perSecond, string unit) =>
        perSecond >= 100 ? $"{perSecond:F0} {unit}/s" : perSecond >= 1 ? $"{perSecond:F1} {unit}/s" : perSecond > 0 ? $"{1 / perSecond:F1} s/{Singular(unit)}" : "";

    static string Singular(string unit) => unit.EndsWith('s') ? unit[..^1] : unit;
}

/// <summary>
/// Text written while bars are on screen goes through Spectre, which prints it above the live display
/// (a plain Console.Write would tear the bars).
/// </summary>
sealed class AnsiConsoleWriter : TextWriter
{
    public override System.Text.Encoding Encoding => Console.OutputEncoding;
    public override void Write(char value) => Write(value.ToString());
    public override void Write(string? value)
    {
        if (string.IsNullOrEmpty(value)) return;
        if (SpectreProgressSink.Showing) AnsiConsole.Write(new Text(value));
        else { Console.Out.Write(value); Console.Out.Flush(); }
    }
    public override void WriteLine(string? value) => Write((value ?? "") + "\n");
    public override void WriteLine() => Write("\n");
    public override void Flush() => Console.Out.Flush();
}

/// <summary>One Spectre live display while any stage runs; a bar per stage with count, rate, ETA and its key figure.</summary>
sealed class SpectreProgressSink : IProgressSink
{
    readonly object _gate = new();
    readonly ConcurrentDictionary<int, StageInfo> _info = new();
    ProgressContext? _context;
    static volatile bool _showing;
    TaskCompletionSource? _stop;

    /// <summary>A live display is on screen (other output must go through Spectre).</summary>
    public static bool Showing => _showing;
    Task? _display;
    int _open;

    sealed class StageInfo(string unit)
    {
        public string Unit { get; } = unit;
        public volatile string? Metric;
    }

    public IProgressStage Begin(string description, long total, string unit)
    {
        lock (_gate)
        {
            if (_open++ == 0) StartDisplay();
            var task = _context!.AddTask(Markup.Escape(description), autoStart: true, maxValue: total > 0 ? total : 1);
            task.IsIndeterminate = total <= 0;
            _info[task.Id] = new StageInfo(unit);
            return new Stage(this, task);
        }
    }

    void StartDisplay()
    {
        var ready = new TaskCompletionSource<ProgressContext>(TaskCreationOptions.RunContinuationsAsynchronously);
        var stop = _stop = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        _display = Task.Run(() => AnsiConsole.Progress()
            .AutoClear(false).HideCompleted(false)
            .Columns(new TaskDescriptionColumn { Alignment = Justify.Left }, new ProgressBarColumn(), new PercentageColumn(),
                new CountColumn(this), new RateColumn(this), new ElapsedTimeColumn(), new RemainingTimeColumn(), new MetricColumn(this))
            .StartAsync(async ctx => { ready.SetResult(ctx); await stop.Task; }));
        _context = ready.Task.GetAwaiter().GetResult();
        _showing = true;
    }

    void End(ProgressTask task)
    {
        lock (_gate)
        {
            if (task.IsIndeterminate) { task.IsIndeterminate = false; task.Value = task.MaxValue; }
            task.StopTask();
            if (--_open > 0) return;
            _stop!.SetResult();
            _display!.GetAwaiter().GetResult();
            _showing = false;
            _context = null;
            _info.Clear();
        }
    }

    StageInfo? Info(ProgressTask task) => _info.TryGetValue(task.Id, out var i) ? i : null;

    sealed class Stage(SpectreProgressSink sink, ProgressTask task) : IProgressStage
    {
        int _ended;
        public void Report(long completed, string? metric = null)
        {
            task.Value = Math.Min(completed, task.MaxValue);
            if (metric is not null && sink.Info(task) is { } info) info.Metric = metric;
        }
        public void Dispose() { if (Interlocked.Exchange(ref _ended, 1) == 0) sink.End(task); }
    }

    sealed class CountColumn(SpectreProgressSink sink) : ProgressColumn
    {
        public override IRenderable Render(RenderOptions options, ProgressTask task, TimeSpan deltaTime) =>
            new Text(task.IsIndeterminate ? "" : $"{task.Value:N0}/{task.MaxValue:N0} {sink.Info(task)?.Unit}", new Style(Color.Grey));
    }

    sealed class RateColumn(SpectreProgressSink sink) : ProgressColumn
    {
        public override IRenderable Render(RenderOptions options, ProgressTask task, TimeSpan deltaTime)
        {
            // Spectre's Speed covers recent samples only; the whole-stage mean is steadier when steps are slow.
            var elapsed = task.ElapsedTime?.TotalSeconds ?? 0;
            double rate = task.Speed ?? (elapsed > 0 ? task.Value / elapsed : 0);
            return new Text(ConsoleProgress.Rate(rate, sink.Info(task)?.Unit ?? "it"), new Style(Color.Aqua));
        }
    }

    sealed class MetricColumn(SpectreProgressSink sink) : ProgressColumn
    {
        public override IRenderable Render(RenderOptions options, ProgressTask task, TimeSpan deltaTime) =>
            new Text(sink.Info(task)?.Metric ?? "", new Style(Color.Yellow));
    }
}

/// <summary>Redirected output: a line every 10 s while a stage runs and a closing line for stages that took a while.</summary>
sealed class PlainProgressSink(TextWriter output) : IProgressSink
{
    static readonly TimeSpan Every = TimeSpan.FromSeconds(10), Worth = TimeSpan.FromSeconds(2);

    public IProgressStage Begin(string description, long total, string unit) => new Stage(output, description, total, unit);

    sealed class Stage(TextWriter output, string description, long total, string unit) : IProgressStage
    {
        readonly Stopwatch _clock = Stopwatch.StartNew();
        TimeSpan _lastLine;
        long _done; string? _metric;

        public void Report(long completed, string? metric = null)
        {
            _done = completed; _metric = metric ?? _metric;
            if (_clock.Elapsed - _lastLine < Every) return;
            _lastLine = _clock.Elapsed;
            Write(total > 0 ? $"{_done:N0}/{total:N0} {unit}" : $"{_done:N0} {unit}");
        }

        void Write(string what)
        {
            var rate = ConsoleProgress.Rate(_done / Math.Max(1e-9, _clock.Elapsed.TotalSeconds), unit);
            lock (output) output.WriteLine($"{description}: {what}" + (rate.Length > 0 ? $", {rate}" : "") + (_metric is null ? "" : $", {_metric}"));
        }

        public void Dispose()
        {
            if (_clock.Elapsed >= Worth || _lastLine > TimeSpan.Zero) Write($"{_done:N0} {unit} in {_clock.Elapsed.TotalSeconds:F1} s");
        }
    }
}
