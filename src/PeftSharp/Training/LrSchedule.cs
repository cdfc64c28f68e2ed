namespace PeftSharp.Training;

/// <summary>
/// transformers' schedule lambdas (optimization.py): the factor applied to each group's base lr at optimizer step
/// <c>step</c> (0-based). With warmup the first step's lr is 0.
/// </summary>
public static class LrSchedule
{
    public static readonly IReadOnlyList<string> Names = new[] { "constant", "constant_with_warmup", "linear", "cosine" };

    public static void Validate(string name)
    {
        if (!Names.Contains(name))
            throw new PeftConfigException($"lr_scheduler_type '{name}' is not supported (supported: {string.Join(", ", Names)})");
    }

    public static double Factor(string name, int step, int warmupSteps, int totalSteps)
    {
        double Warmup() => step / (double)Math.Max(1, warmupSteps);
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
            {
                if (step < warmupSteps) return Warmup();
                double progress = (step - warmupSteps) / (double)Math.Max(1, totalSteps - warmupSteps);
                return Math.Max(0.0, 0.5 * (1.0 + Math.Cos(Math.PI * 0.5 * 2.0 * progress)));
            }
            default:
                Validate(name);
                return 1.0;
        }
    }
}
