using System.Text.Json.Nodes;

namespace PeftSharp.Tuners.Lora;

/// <summary>
/// LoRA in the rest of the product: <c>finetuning_type: lora</c> (LLaMA-Factory's keys plus peft's use_dora /
/// use_rslora), how inspect-adapter describes a LoRA adapter, and its rows of the methods benchmark.
/// </summary>
public static class LoraRecipes
{
    /// <summary>The recipe key every LoRA-shaped type honours for peft's modules_to_save.</summary>
    public const string AdditionalTarget = "additional_target";

    /// <summary>
    /// The LoraConfig a recipe names: lora_rank, lora_alpha (2 × rank by default), lora_dropout, lora_target ("all" =
    /// every linear layer but the output head), additional_target, use_dora, use_rslora. Not validated (variants adjust it first).
    /// </summary>
    public static LoraConfig Config(RecipeContext ctx) => new()
    {
        R = ctx.Settings.LoraRank,
        LoraAlpha = ctx.Settings.LoraAlpha ?? 2.0 * ctx.Settings.LoraRank,
        LoraDropout = ctx.Settings.LoraDropout,
        TargetModules = ctx.Settings.LoraTargets(ctx.Model),
        // LLaMA-Factory's additional_target: modules trained in full beside the adapter and saved with it (peft's modules_to_save).
        ModulesToSave = ctx.Keys.Names(AdditionalTarget),
        UseDora = ctx.Keys.Bool("use_dora", false),
        UseRsLora = ctx.Keys.Bool("use_rslora", false),
        TaskType = ctx.TaskType,
        BaseModelNameOrPath = ctx.ModelDir,
    };

    public static readonly Recipe Lora = new("lora")
    {
        Keys = new[] { "use_dora", "use_rslora", AdditionalTarget },
        QuantizedBase = true,
        Validate = (k, _) => { k.Bool("use_dora", false); k.Bool("use_rslora", false); },
        Config = ctx =>
        {
            var c = Config(ctx);
            c.Validate("lora settings");
            return c;
        },
    };

    /// <summary>inspect-adapter's lines for a LoRA-shaped config (LoRA, and the LoRA part of its variants).</summary>
    public static AdapterDescription Describe(string method, LoraConfig lora) => new(method + (lora.UseDora ? " (DoRA)" : "") + (lora.UseRsLora ? " (rsLoRA)" : ""))
    {
        Lines = new[]
        {
            ("targets", $"{lora.TargetModules}{(lora.ModulesToSave is { Count: > 0 } m ? $"; modules_to_save {string.Join(", ", m)}" : "")}"),
            ("rank", $"r={lora.R}, lora_alpha={lora.LoraAlpha}" +
                (lora.RankPattern.Count > 0 ? $", rank_pattern {string.Join(", ", lora.RankPattern.Select(kv => $"{kv.Key}={kv.Value}"))}" : "") +
                (lora.AlphaPattern.Count > 0 ? $", alpha_pattern {string.Join(", ", lora.AlphaPattern.Select(kv => $"{kv.Key}={kv.Value}"))}" : "")),
        },
        Fields = new JsonObject
        {
            ["target_modules"] = lora.TargetModules?.ToString(),
            ["r"] = lora.R,
            ["lora_alpha"] = lora.LoraAlpha,
            ["rank_pattern"] = new JsonObject(lora.RankPattern.Select(kv => KeyValuePair.Create(kv.Key, (JsonNode?)kv.Value))),
            ["alpha_pattern"] = new JsonObject(lora.AlphaPattern.Select(kv => KeyValuePair.Create(kv.Key, (JsonNode?)kv.Value))),
            ["modules_to_save"] = lora.ModulesToSave is { } mts ? new JsonArray(mts.Select(m => (JsonNode?)m).ToArray()) : null,
            ["use_dora"] = lora.UseDora,
            ["use_rslora"] = lora.UseRsLora,
        },
    };

    public static readonly IReadOnlyList<BenchEntry> Bench = new BenchEntry[]
    {
        new("LoRA", "lora", 1e-2),
        new("DoRA", "lora", 1e-2) { Keys = (_, _) => new() { ["use_dora"] = true } },
        // α/√r scales ΔW 2.8× LoRA's α/r at r=8, so the same step in ΔW needs 1/2.8 the rate (a 1e-2 sweep won at its bottom).
        new("rsLoRA", "lora", 2e-3) { Keys = (_, _) => new() { ["use_rslora"] = true } },
        // LoRA+ is an optimizer setting over a plain LoRA adapter (loraplus_lr_ratio); B's rate is 16× this one.
        new("LoRA+", "lora", 1e-3) { Settings = s => s with { LoraPlusLrRatio = 16 } },
    };
}
