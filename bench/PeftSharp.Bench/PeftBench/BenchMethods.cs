namespace PeftSharp.Bench.PeftBench;

/// <summary>
/// One method of the catalogue as a `peft train` recipe: its LLaMA-Factory keys (the same YAML a user writes), the
/// learning rates it is swept over, and the rows whose trained adapters it builds on (AdapterFusion fuses two).
/// </summary>
public sealed record BenchMethod(string Name, string Family, string Keys, double[] LrSweep, string[]? Fuses = null)
{
    public bool IsFull => Name == BenchMethods.Full;
}

/// <summary>
/// Every method of the catalogue plus full fine-tuning, each with the recipe a user would write for it. LoRA-family
/// rows use rank 8 on every linear layer, so their parameter budgets line up; each family keeps its usual
/// hyperparameters otherwise (docs/peftbench.md lists them).
/// </summary>
public static class BenchMethods
{
    public const string Full = "Full fine-tuning";

    const string Lora = "lora_rank: 8\nlora_alpha: 16\nlora_target: all\n";
    static readonly double[] LoraLr = { 2e-3, 5e-3, 1e-2 };
    static readonly double[] PromptLr = { 3e-3, 1e-2, 3e-2 };
    static readonly double[] AdapterLr = { 1e-3, 3e-3, 1e-2 };

    public static readonly IReadOnlyList<BenchMethod> All = new BenchMethod[]
    {
        new(Full, "full", "finetuning_type: full\n", new[] { 3e-4, 1e-3, 3e-3 }),

        new("LoRA", "lora", "finetuning_type: lora\n" + Lora, LoraLr),
        new("rsLoRA", "lora", "finetuning_type: lora\nuse_rslora: true\n" + Lora, new[] { 1e-3, 2e-3, 5e-3 }),
        new("DoRA", "lora", "finetuning_type: lora\nuse_dora: true\n" + Lora, LoraLr),
        new("LoRA-FA", "lora", "finetuning_type: lora_fa\nlora_fa_optimizer: true\n" + Lora, LoraLr),
        new("LoRA+", "lora", "finetuning_type: lora\nloraplus_lr_ratio: 16\n" + Lora, new[] { 5e-4, 1e-3, 2e-3 }),
        new("Delta-LoRA", "lora", "finetuning_type: delta_lora\ndelta_lora_update_ratio: 2\ndelta_lora_start_steps: 20\n" + Lora, LoraLr),
        new("VeRA", "lora", "finetuning_type: vera\nvera_rank: 256\nvera_d_initial: 0.1\nlora_target: all\n", new[] { 1e-2, 2e-2, 5e-2 }),
        new("AdaLoRA", "lora", "finetuning_type: adalora\nadalora_init_r: 12\nadalora_target_r: 8\nadalora_tinit: 20\nadalora_tfinal: 40\nadalora_delta_t: 5\nlora_alpha: 16\nlora_target: all\n", LoraLr),
        new("QLoRA (NF4)", "lora", "finetuning_type: lora\nquantization_bit: 4\nquantization_type: nf4\ndouble_quantization: true\n" + Lora, LoraLr),
        new("IA³", "rescale", "finetuning_type: ia3\n", new[] { 1e-2, 3e-2, 1e-1 }),

        new("Prompt Tuning", "prompt", "finetuning_type: prompt_tuning\nnum_virtual_tokens: 16\n", new[] { 1e-2, 3e-2, 1e-1 }),
        new("P-Tuning", "prompt", "finetuning_type: p_tuning\nnum_virtual_tokens: 16\nencoder_hidden_size: 64\n", PromptLr),
        new("Prefix Tuning", "prompt", "finetuning_type: prefix_tuning\nnum_virtual_tokens: 16\nprefix_projection: true\nencoder_hidden_size: 64\n", PromptLr),
        new("P-Tuning v2", "prompt", "finetuning_type: p_tuning_v2\nnum_virtual_tokens: 16\n", PromptLr),
        new("LLaMA-Adapter", "prompt", "finetuning_type: llama_adapter\nadapter_len: 10\n", PromptLr),

        new("Houlsby", "adapter", "finetuning_type: adapter\nadapter_config: double_seq_bn\nreduction_factor: 16\n", AdapterLr),
        new("Pfeiffer", "adapter", "finetuning_type: adapter\nadapter_config: seq_bn\nreduction_factor: 16\n", AdapterLr),
        new("Parallel", "adapter", "finetuning_type: adapter\nadapter_config: par_bn\n", AdapterLr),
        new("Scaled parallel", "adapter", "finetuning_type: adapter\nadapter_config: scaled_par_bn\n", AdapterLr),
        new("AdapterDrop", "adapter", "finetuning_type: adapter\nadapter_config: seq_bn\nreduction_factor: 16\nrobust_adapter_drop: true\n", AdapterLr),
        new("AdapterFusion", "adapter", "finetuning_type: adapter\n", new[] { 5e-4, 2e-3, 5e-3 }, Fuses: new[] { "Pfeiffer", "Houlsby" }),
        new("BitFit", "adapter", "finetuning_type: bitfit\n", new[] { 2e-3, 5e-3, 1e-2 }),
        new("MAM", "adapter", "finetuning_type: mam\nprefix_length: 16\nreduction_factor: 4\n", AdapterLr),
        new("UniPELT", "adapter", "finetuning_type: unipelt\nprefix_length: 10\nreduction_factor: 16\nlora_rank: 8\nlora_alpha: 2\n", AdapterLr),
    };

    public static IReadOnlyList<BenchMethod> Select(string? names)
    {
        if (string.IsNullOrWhiteSpace(names)) return All;
        var wanted = names.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
        var picked = new List<BenchMethod> { All[0] };  // full fine-tuning is the reference of every table
        foreach (var w in wanted)
        {
            // A method's name, else a family name (lora, prompt, adapter, rescale) that picks all of its methods.
            var matches = All.Where(x => x.Name.Equals(w, StringComparison.OrdinalIgnoreCase)).ToList();
            if (matches.Count == 0) matches = All.Where(x => x.Family.Equals(w, StringComparison.OrdinalIgnoreCase)).ToList();
            if (matches.Count == 0)
                throw new ArgumentException($"--methods: no method or family '{w}' (methods: {string.Join(", ", All.Select(x => x.Name))}; families: lora, prompt, adapter, rescale)");
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
