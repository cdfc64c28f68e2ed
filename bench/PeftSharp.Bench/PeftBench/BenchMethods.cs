using System.Globalization;
using System.Text;
using PeftSharp.Tuners;

namespace PeftSharp.Bench.PeftBench;

/// <summary>
/// One row of the catalogue as a `peft train` recipe: its YAML keys for a run of (steps, layers), the learning rate its
/// sweep centres on, and the rows whose trained adapters it builds on (AdapterFusion fuses two).
/// </summary>
public sealed record BenchMethod(string Name, string Family, double Lr, Func<int, int, string> Keys, string[]? Fuses = null)
{
    public bool IsFull => Name == BenchMethods.Full;

    /// <summary>The sweep: half, once and twice the method's benchmark learning rate (a one-point sweep takes the middle).</summary>
    public double[] LrSweep => new[] { Lr / 2, Lr, Lr * 2 };
}

/// <summary>
/// The catalogue: every registered method's benchmark rows (<see cref="IPeftMethod.Bench"/>, declared in each method's
/// folder, so a new method appears here by registering), written as the YAML a user would, plus full fine-tuning as the
/// reference and QLoRA (LoRA over an NF4 base). LoRA-family rows share LLaMA-Factory's defaults (rank 8, alpha 16,
/// every linear layer), so their parameter budgets line up.
/// </summary>
public static class BenchMethods
{
    public const string Full = "Full fine-tuning";

    // The bench's generic settings are LLaMA-Factory's defaults, so a recipe only names what a row changes.
    static readonly RecipeSettings Generic = new() { LoraRank = 8, LoraAlpha = 16, LoraTarget = "all", Source = "peftbench" };

    static string Yaml(string type, RecipeSettings s, IReadOnlyDictionary<string, System.Text.Json.Nodes.JsonNode?> keys)
    {
        var sb = new StringBuilder($"finetuning_type: {type}\n");
        void Line(string key, object value) => sb.Append(CultureInfo.InvariantCulture, $"{key}: {value}\n");
        if (s.LoraRank != Generic.LoraRank) Line("lora_rank", s.LoraRank);
        if (s.LoraAlpha is { } a && a != Generic.LoraAlpha) Line("lora_alpha", a);
        if (s.LoraTarget != Generic.LoraTarget) Line("lora_target", s.LoraTarget);
        if (s.LoraPlusLrRatio is { } ratio) Line("loraplus_lr_ratio", ratio);
        if (s.Optim != Generic.Optim) Line("optim", s.Optim);
        if (s.Quantized) sb.Append("quantization_bit: 4\nquantization_type: nf4\ndouble_quantization: true\n");
        // A JSON value is YAML flow syntax, so the method's keys go in as they are.
        foreach (var (k, v) in keys) Line(k, v?.ToJsonString() ?? "null");
        return sb.ToString();
    }

    static BenchMethod From(BenchEntry e, IPeftMethod m)
    {
        var type = e.Recipe ?? m.Recipes[0].Name;
        return new BenchMethod(e.Name, e.Family, e.Lr, (steps, layers) =>
            Yaml(type, e.Settings?.Invoke(Generic) ?? Generic, e.Keys?.Invoke(steps, layers) ?? new()));
    }

    static IReadOnlyList<BenchMethod> Build()
    {
        var rows = new List<BenchMethod> { new(Full, "full", 1e-3, (_, _) => "finetuning_type: full\n") };
        foreach (var m in PeftMethods.All)
            foreach (var e in m.Bench)
            {
                if (e.Create is not null) continue;  // built in code, not by a recipe: the fusion row below stands for it
                rows.Add(From(e, m));
                if (e.Name == "LoRA")
                    rows.Add(From(e, m) with { Name = "QLoRA (NF4)", Keys = (s, l) => Yaml("lora", Generic with { Quantized = true }, new Dictionary<string, System.Text.Json.Nodes.JsonNode?>()) });
            }
        // AdapterFusion as users run it: a fusion stage over two adapters trained first (the first two bottleneck rows).
        var fused = rows.Where(r => r.Family == "adapter" && r.Keys(1, 1).Contains("adapter_config")).Take(2).Select(r => r.Name).ToArray();
        if (fused.Length == 2)
            rows.Add(new BenchMethod("AdapterFusion", "adapter", 5e-3, (_, _) => "finetuning_type: adapter\n", fused));
        return rows;
    }

    public static readonly IReadOnlyList<BenchMethod> All = Build();

    public static IReadOnlyList<BenchMethod> Select(string? names)
    {
        if (string.IsNullOrWhiteSpace(names)) return All;
        var wanted = names.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
        var picked = new List<BenchMethod> { All[0] };  // full fine-tuning is the reference of every table
        foreach (var w in wanted)
        {
            // A method's name, else a family name that picks all of its methods.
            var matches = All.Where(x => x.Name.Equals(w, StringComparison.OrdinalIgnoreCase)).ToList();
            if (matches.Count == 0) matches = All.Where(x => x.Family.Equals(w, StringComparison.OrdinalIgnoreCase)).ToList();
            if (matches.Count == 0)
                throw new ArgumentException($"--methods: no method or family '{w}' (methods: {string.Join(", ", All.Select(x => x.Name))}; families: {string.Join(", ", All.Select(x => x.Family).Distinct())})");
            foreach (var m in matches)
            {
                foreach (var dep in m.Fuses ?? Array.Empty<string>())
                    if (!picked.Any(p => p.Name == dep)) picked.Add(All.First(x => x.Name == dep));
                if (!picked.Contains(m)) picked.Add(m);
            }
        }
        return picked;
    }
}
