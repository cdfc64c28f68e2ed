using System.Globalization;
using System.Text.Json.Nodes;
using PeftSharp.Tuners.Lora;

namespace PeftSharp.Tuners.DeltaLora;

/// <summary>
/// Delta-LoRA (Zi et al., 2309.02411; not in HF peft): LoRA whose frozen base weight also receives
/// λ·scaling·(B_{t+1}A_{t+1} − B_tA_t) after every optimizer step t ≥ start_steps. The LoRA fields live in
/// <see cref="Lora"/>; lora_dropout is forced to 0 (the surrogate update needs ∂L/∂(BA) = ∂L/∂W). File format: docs/delta-lora.md.
/// </summary>
public sealed record DeltaLoraConfig : PeftConfig
{
    public override string PeftType => "DELTA_LORA";

    public LoraConfig Lora { get; init; } = new();
    /// <summary>update_ratio λ (paper default 2).</summary>
    public double UpdateRatio { get; init; } = 2;
    /// <summary>start_steps K: the base weight is updated from optimizer step K on (0-based; paper default 500).</summary>
    public int StartSteps { get; init; } = 500;

    public void Validate(string source = "DeltaLoraConfig")
    {
        Lora.Validate(source);
        if (Lora.UseDora) throw new PeftConfigException($"{source}: Delta-LoRA does not support DoRA (use_dora)");
        if (StartSteps < 0) throw new PeftConfigException($"{source}: 'start_steps' must be >= 0; found {StartSteps}");
        if (double.IsNaN(UpdateRatio) || double.IsInfinity(UpdateRatio)) throw new PeftConfigException($"{source}: 'update_ratio' must be a finite number; found {UpdateRatio}");
    }

    public static DeltaLoraConfig FromJson(JsonObject json, string source)
    {
        var loraJson = (JsonObject)json.DeepClone();
        loraJson.Remove("update_ratio");
        loraJson.Remove("start_steps");
        loraJson["peft_type"] = "LORA";
        var lora = LoraConfig.FromJson(loraJson, source);
        var r = new ConfigReader(json, source);
        r.Accept(loraJson.Select(kv => kv.Key).ToArray());
        var c = ReadCommon(new DeltaLoraConfig(), r) with
        {
            Lora = lora,
            UpdateRatio = r.Double("update_ratio", 2),
            StartSteps = r.Int("start_steps", 500),
        };
        c.Validate(source);
        return c;
    }

    static readonly string[] CommonKeys = { "auto_mapping", "base_model_name_or_path", "inference_mode", "peft_type", "peft_version", "revision", "task_type" };

    protected override void WriteFields(JsonObject o)
    {
        foreach (var (k, v) in Lora.ToJson())
            if (!CommonKeys.Contains(k)) o[k] = v?.DeepClone();
        o["update_ratio"] = UpdateRatio;
        o["start_steps"] = StartSteps;
    }

    public override string ToString() =>
        string.Create(CultureInfo.InvariantCulture, $"DeltaLoraConfig(r={Lora.R}, lora_alpha={Lora.LoraAlpha}, update_ratio={UpdateRatio}, start_steps={StartSteps}, target_modules={Lora.TargetModules?.ToString() ?? "default"})");
}
