namespace PeftSharp.Tuners.Vera;

/// <summary>
/// <c>finetuning_type: vera</c>: vera_rank (default 256), vera_d_initial, vera_projection_prng_key,
/// vera_save_projection, with lora_target and lora_dropout; VeRA has no lora_rank / lora_alpha.
/// </summary>
public static class VeraRecipe
{
    public static readonly Recipe Recipe = new("vera")
    {
        Keys = new[] { "vera_rank", "vera_d_initial", "vera_projection_prng_key", "vera_save_projection" },
        Validate = (keys, s) =>
        {
            void Check(bool ok, string message)
            {
                if (!ok) throw new PeftConfigException($"{s.Source}: {message}");
            }
            Check(!s.Sets("lora_rank"), "lora_rank does not apply to finetuning_type vera; its rank is vera_rank (default 256)");
            Check(!s.Sets("lora_alpha"), "lora_alpha does not apply to finetuning_type vera (VeRA learns its scale in vera_lambda_d / vera_lambda_b)");
            var rank = keys.Int("vera_rank", 256);
            Check(rank > 0, $"vera_rank must be > 0; found {rank}");
            var d = keys.Double("vera_d_initial", 0.1);
            Check(double.IsFinite(d), $"vera_d_initial must be a finite number; found {d}");
            keys.Long("vera_projection_prng_key", 0);
            keys.Bool("vera_save_projection", true);
        },
        Config = ctx =>
        {
            var k = ctx.Keys;
            var c = new VeraConfig
            {
                R = k.Int("vera_rank", 256), TargetModules = ctx.Settings.LoraTargets(ctx.Model), VeraDropout = ctx.Settings.LoraDropout,
                DInitial = k.Double("vera_d_initial", 0.1), ProjectionPrngKey = k.Long("vera_projection_prng_key", 0),
                SaveProjection = k.Bool("vera_save_projection", true), TaskType = ctx.TaskType, BaseModelNameOrPath = ctx.ModelDir,
            };
            c.Validate("vera settings");
            return c;
        },
    };

    public static readonly BenchEntry Bench = new("VeRA", "lora", 5e-2) { Keys = (_, _) => new() { ["vera_rank"] = 128 } };
}
