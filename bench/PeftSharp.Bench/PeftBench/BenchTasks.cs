namespace PeftSharp.Bench.PeftBench;

/// <summary>
/// One held-out-evaluated task: text prompts ("rv kqz=") with one right answer ("zqk"). Seeded and deterministic;
/// the bases are pretrained on copying only ("cp kqz=kqz"), so each task is new to them.
/// </summary>
public sealed record BenchTask(string Name, string Description, Func<Random, (string Prompt, string Answer)> Example)
{
    /// <summary>Distinct examples: held-out rows never appear in training (same seed, same split).</summary>
    public (List<(string Prompt, string Answer)> Train, List<(string Prompt, string Answer)> HeldOut) Split(int train, int heldOut, int seed)
    {
        var rng = new Random(seed);
        var seen = new HashSet<string>();
        var all = new List<(string, string)>();
        for (int tries = 0; all.Count < train + heldOut && tries < 100 * (train + heldOut); tries++)
        {
            var e = Example(rng);
            if (seen.Add(e.Prompt)) all.Add(e);
        }
        if (all.Count < train + heldOut) throw new ArgumentException($"task {Name}: only {all.Count} distinct examples for {train}+{heldOut}");
        return (all.Take(train).ToList(), all.Skip(train).ToList());
    }
}

public static class BenchTasks
{
    static string Word(Random r, int min = 3, int max = 5) =>
        new(Enumerable.Range(0, r.Next(min, max + 1)).Select(_ => (char)('a' + r.Next(26))).ToArray());

    public static readonly IReadOnlyList<BenchTask> All = new BenchTask[]
    {
        new("reversal", "rv kqz=zqk: the letters in reverse order", r => { var w = Word(r); return ($"rv {w}=", new string(w.Reverse().ToArray())); }),
        new("shift", "sh kqz=lra: each letter replaced by the next one (z wraps to a)", r =>
        {
            var w = Word(r);
            return ($"sh {w}=", new string(w.Select(c => c == 'z' ? 'a' : (char)(c + 1)).ToArray()));
        }),
        new("sort", "st kqza=akqz: the letters sorted", r => { var w = Word(r); return ($"st {w}=", new string(w.Order().ToArray())); }),
        new("carry", "ad 47+85=132: two-digit addition, carries included", r => { int a = r.Next(10, 100), b = r.Next(10, 100); return ($"ad {a}+{b}=", (a + b).ToString()); }),
        new("recall", "kv a7 c2 f9 c=2: the digit stored under the queried key", r =>
        {
            var keys = Enumerable.Range(0, 26).OrderBy(_ => r.Next()).Take(4).Select(i => (char)('a' + i)).ToArray();
            var values = keys.Select(_ => r.Next(10)).ToArray();
            int q = r.Next(keys.Length);
            return ($"kv {string.Join(' ', keys.Select((k, i) => $"{k}{values[i]}"))} {keys[q]}=", values[q].ToString());
        }),
        new("classify", "cl kqz=y: y when the word's first letter comes before its last, else n (a 2-class decision)", r =>
        {
            var w = Word(r);
            return ($"cl {w}=", w[0] < w[^1] ? "y" : "n");
        }),
    };

    public static BenchTask Get(string name) => All.FirstOrDefault(t => t.Name == name)
        ?? throw new ArgumentException($"--tasks: no task '{name}' (tasks: {string.Join(", ", All.Select(t => t.Name))})");

    /// <summary>The pretraining corpus: copies of letter words, digit strings and key-digit lists, never a task.</summary>
    public static List<string> Pretraining(int rows, int seed)
    {
        var r = new Random(seed);
        return Enumerable.Range(0, rows).Select(i =>
        {
            var w = (i % 3) switch
            {
                0 => Word(r),
                1 => r.Next(10, 1000).ToString(),
                _ => $"{(char)('a' + r.Next(26))}{r.Next(10)} {(char)('a' + r.Next(26))}{r.Next(10)}",
            };
            return $"cp {w}={w}";
        }).ToList();
    }
}
