using System.Text.Json;

namespace PeftSharp.Bench;

/// <summary>
/// <c>dotnet run -c Release --project bench/PeftSharp.Bench -- NAME [--json] [--key value ...]</c>.
/// Every <see cref="IBenchmark"/> in this assembly is found by reflection: a new benchmark is one file.
/// </summary>
public static class Program
{
    public static int Main(string[] args)
    {
        var benches = typeof(Program).Assembly.GetTypes()
            .Where(t => typeof(IBenchmark).IsAssignableFrom(t) && !t.IsAbstract && !t.IsInterface)
            .Select(t => (IBenchmark)Activator.CreateInstance(t)!)
            .OrderBy(b => b.Name).ToList();
        if (args.Length == 0 || args[0] is "--list" or "-l" or "--help")
        {
            foreach (var b in benches) Console.WriteLine($"{b.Name,-16} {b.Description}");
            return args.Length == 0 ? 1 : 0;
        }
        var bench = benches.FirstOrDefault(b => b.Name == args[0]);
        if (bench is null)
        {
            Console.Error.WriteLine($"error: no benchmark '{args[0]}' (run --list)");
            return 2;
        }
        var options = BenchOptions.Parse(args.Skip(1).ToArray());
        BenchResult result;
        var stdout = Console.Out;
        using (PeftSharp.Cli.ConsoleProgress.Install(options.Json, ref stdout, Console.Error))
        using (PeftSharp.Runtime.PeftProgress.Begin($"bench {bench.Name}", 0, "runs"))
        try { result = bench.Run(options); }
        catch (Exception e) when (e is ArgumentException or PeftSharp.PeftSharpException)
        {
            // A bad option value: one line, not a stack trace.
            Console.Error.WriteLine($"error: {e.Message}");
            return 2;
        }
        // Figures depend on the CPU class and MKL path by 2-50x, so every result says which machine it ran on.
        var machine = BenchMachine.Current();
        result.Notes.Add(machine.FooterLine);
        if (options.Args.TryGetValue("compare-python", out var pythonFile))
        {
            try { result.Notes.AddRange(PythonComparison.Compare(bench.Name, result, pythonFile)); }
            catch (PeftSharp.PeftSharpException e) { Console.Error.WriteLine($"error: {e.Message}"); return 2; }
        }
        if (options.Json) Console.WriteLine(JsonSerializer.Serialize(result.ToJson(bench.Name, machine), new JsonSerializerOptions { WriteIndented = true, PropertyNamingPolicy = JsonNamingPolicy.SnakeCaseLower }));
        else result.Print(Console.Out);
        return result.ExitCode;
    }
}

public interface IBenchmark
{
    string Name { get; }
    string Description { get; }
    BenchResult Run(BenchOptions options);
}

/// <summary>--json plus free-form --key value pairs (flags without a value read as "true").</summary>
public sealed class BenchOptions
{
    public bool Json { get; init; }
    public Dictionary<string, string> Args { get; } = new();

    public string Get(string key, string fallback) => Args.TryGetValue(key, out var v) ? v : fallback;
    public int GetInt(string key, int fallback) => Args.TryGetValue(key, out var v) ? int.Parse(v) : fallback;

    public static BenchOptions Parse(string[] args)
    {
        var o = new BenchOptions { Json = args.Contains("--json") };
        for (int i = 0; i < args.Length; i++)
        {
            if (!args[i].StartsWith("--") || args[i] == "--json") continue;
            var key = args[i][2..];
            o.Args[key] = i + 1 < args.Length && !args[i + 1].StartsWith("--") ? args[++i] : "true";
        }
        return o;
    }
}

/// <summary>A table (columns + rows) plus notes; printed aligned or as JSON.</summary>
public sealed class BenchResult
{
    public required string[] Columns { get; init; }
    public List<object[]> Rows { get; } = new();
    public List<string> Notes { get; } = new();
    /// <summary>The process's exit code: non-zero when a benchmark's own checks failed (a smoke run in CI reads it).</summary>
    public int ExitCode { get; set; }

    public void Add(params object[] row) => Rows.Add(row);

    static string Cell(object v) => v switch
    {
        double d => d.ToString(Math.Abs(d) >= 100 ? "F1" : Math.Abs(d) >= 1 ? "F3" : "G4"),
        float f => Cell((double)f),
        _ => v?.ToString() ?? "",
    };

    public void Print(TextWriter w)
    {
        var cells = Rows.Select(r => r.Select(Cell).ToArray()).ToList();
        var widths = Columns.Select((c, i) => Math.Max(c.Length, cells.Count == 0 ? 0 : cells.Max(r => i < r.Length ? r[i].Length : 0))).ToArray();
        w.WriteLine(string.Join(" | ", Columns.Select((c, i) => c.PadRight(widths[i]))));
        w.WriteLine(string.Join("-|-", widths.Select(x => new string('-', x))));
        foreach (var r in cells) w.WriteLine(string.Join(" | ", r.Select((c, i) => c.PadLeft(widths[i]))));
        foreach (var n in Notes) w.WriteLine(n);
    }

    public object ToJson(string name, BenchMachine machine) => new
    {
        benchmark = name,
        machine,
        rows = Rows.Select(r => Columns.Zip(r).ToDictionary(p => p.First, p => p.Second)).ToList(),
        notes = Notes,
    };
}
