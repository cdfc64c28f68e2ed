namespace PeftSharp.Training;

/// <summary>
/// transformers' schedule lambdas (optimization.py): the factor applied to each group's base lr at optimizer step
/// <c>step</c> (0-based). With warmup the first step's lr is 0. <c>lr_scheduler_kwargs</c> carry the schedules'
/// extra arguments (num_cycles, min_lr / min_lr_rate, power / lr_end, timescale).
/// </summary>
public static class LrSchedule
{
    public static readonly IReadOnlyList<string> Names =
        ["constant", "constant_with_warmup", "linear", "cosine", "cosine_with_min_lr", "cosine_with_restarts", "polynomial", "inverse_sqrt"];

    static readonly Dictionary<string, string[]> Kwargs = new()
    {
        ["constant"] = [], ["constant_with_warmup"] = [], ["linear"] = [], ["cosine"] = ["num_cycles"],
        ["cosine_with_min_lr"] = ["num_cycles", "min_lr", "min_lr_rate"], ["cosine_with_restarts"] = ["num_cycles"],
        ["polynomial"] = ["lr_end", "power"], ["inverse_sqrt"] = ["timescale"],
    };

    public static void Validate(string name, IReadOnlyDictionary<string, double>? kwargs = null)
    {
        if (!Names.Contains(name))
            throw new PeftConfigException($"lr_scheduler_type '{name}' is not supported (supported: {string.Join(", ", Names)})");
        kwargs ??= new Dictionary<string, double>();
        foreach (var k in kwargs.Keys)
            if (!Kwargs[name].Contains(k))
                throw new PeftConfigException($"lr_scheduler_kwargs: '{k}' is not an argument of {name}" +
                    (Kwargs[name].Length > 0 ? $" (it takes {string.Join(", ", Kwargs[name])})" : " (it takes none)"));
        if (name == "cosine_with_min_lr" && kwargs.ContainsKey("min_lr") == kwargs.ContainsKey("min_lr_rate"))
            throw new PeftConfigException("lr_scheduler_kwargs: cosine_with_min_lr needs exactly one of min_lr or min_lr_rate");
    }

    /// <summary>The factor at <paramref name="step"/> for the run's schedule, kwargs and learning rate.</summary>
    public static double Factor(TrainingArguments args, int step, int warmupSteps, int totalSteps) =>
        Factor(args.LrSchedulerType, step, warmupSteps, totalSteps, args.LrSchedulerKwargs, args.LearningRate);

    public static double Factor(string name, int step, int warmupSteps, int totalSteps,
        IReadOnlyDictionary<string, double>? kwargs = null, double baseLr = 0)
    {
        double Arg(string key, double fallback) => kwargs is not null && kwargs.TryGetValue(key, out var v) ? v : fallback;
        double Warmup() => step / (double)Math.Max(1, warmupSteps);
        double Progress() => (step - warmupSteps) / (double)Math.Max(1, totalSteps - warmupSteps);
        switch (name)
        {
            case "constant":
                return 1.0;
            case "constant_with_warmup":
                return step < warmupSteps ? Warmup() : 1.0;
            case "linear":
                if (step < warmupSteps) return Warmup();
                return Math.Max(0.0, (totalSteps - step) / (double)Math.Max(1, totalSteps - warmupSteps));
            case "cosine":
                if (step < warmupSteps) return Warmup();
                return Math.Max(0.0, 0.5 * (1.0 + Math.Cos(Math.PI * Arg("num_cycles", 0.5) * 2.0 * Progress())));
            case "cosine_with_min_lr":
            {
                if (step < warmupSteps) return Warmup();
                double rate = kwargs?.ContainsKey("min_lr_rate") == true ? Arg("min_lr_rate", 0) : Arg("min_lr", 0) / baseLr;
                double f = 0.5 * (1.0 + Math.Cos(Math.PI * Arg("num_cycles", 0.5) * 2.0 * Progress()));
                return Math.Max(0.0, f * (1 - rate) + rate);
            }
            case "cosine_with_restarts":
            {
                if (step < warmupSteps) return Warmup();
                double progress = Progress();
                if (progress >= 1.0) return 0.0;
                return Math.Max(0.0, 0.5 * (1.0 + Math.Cos(Math.PI * ((Arg("num_cycles", 1) * progress) % 1.0))));
            }
            case "polynomial":
            {
                double lrEnd = Arg("lr_end", 1e-7), power = Arg("power", 1.0);
                if (!(baseLr > lrEnd)) throw new PeftConfigException($"polynomial schedule: lr_end ({lrEnd}) must be smaller than learning_rate ({baseLr})");
                if (step < warmupSteps) return Warmup();
                if (step > totalSteps) return lrEnd / baseLr;
                double remaining = 1 - (step - warmupSteps) / (double)Math.Max(1, totalSteps - warmupSteps);
                return ((baseLr - lrEnd) * Math.Pow(remaining, power) + lrEnd) / baseLr;
            }
            case "inverse_sqrt":
            {
                double timescale = Arg("timescale", warmupSteps > 0 ? warmupSteps : 10_000);
                if (step < warmupSteps) return Warmup();
                return 1.0 / Math.Sqrt((step + (timescale - warmupSteps)) / timescale);
            }
            default:
                Validate(name);
                return 1.0;
        }
    }
}
