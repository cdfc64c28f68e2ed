using System.Diagnostics;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using PeftSharp.Models;
using PeftSharp.Quantization;
using PeftSharp.Runtime;
using PeftSharp.Training.Optimizers;
using PeftSharp.Tuners;
using TorchSharp;
using static TorchSharp.torch;

namespace PeftSharp.Bench.Benchmarks;

/// <summary>
/// QLoRA vs LoRA training memory and step time on the bench Llama (hidden 512, 8 layers, 8 heads, intermediate 1376,
/// vocab 8192; batch 4 × seq 256; LoRA r=16 on all linear layers), each configuration in a fresh child process, plus
/// held-out perplexity of NF4 / FP4 bases against the float32 base on a small byte-level Llama trained here on built-in text.
/// Options: --steps 3 (timed training steps per config), --ppl-steps 300, --skip-memory, --skip-quality.
/// </summary>
public sealed class QLoraBench : IBenchmark
{
    public string Name => "qlora";
    public string Description => "QLoRA vs LoRA training peak RSS and step time (fresh process each); NF4/FP4 base perplexity vs fp32";

    static readonly string[] Configs = { "lora-fp32/adamw_torch", "qlora-nf4dq/adamw_torch", "qlora-nf4dq/paged_adamw_8bit", "qlora-fp4/adamw_8bit" };

    public BenchResult Run(BenchOptions options)
    {
        if (options.Args.TryGetValue("child", out var child)) return Child(child, options.GetInt("steps", 3));
        var result = new BenchResult { Columns = new[] { "case", "value", "unit", "detail" } };
        if (!options.Args.ContainsKey("skip-memory"))
            foreach (var config in Configs) RunChild(config, options.GetInt("steps", 3), result);
        if (!options.Args.ContainsKey("skip-quality")) Quality(options.GetInt("ppl-steps", 300), result);
        result.Notes.Add($"{Environment.ProcessorCount} logical CPUs, torch threads {torch.get_num_threads()}; machine load affects step times.");
        return result;
    }

    // ---- memory and step time: one child process per configuration ----

    static void RunChild(string config, int steps, BenchResult result)
    {
        var psi = new ProcessStartInfo(Environment.ProcessPath!) { RedirectStandardOutput = true, RedirectStandardError = true };
        if (Path.GetFileNameWithoutExtension(Environment.ProcessPath!) == "dotnet") psi.ArgumentList.Add(typeof(Program).Assembly.Location);
        foreach (var a in new[] { "qlora", "--child", config, "--steps", steps.ToString(), "--json" }) psi.ArgumentList.Add(a);
        using var p = Process.Start(psi)!;
        var stdout = p.StandardOutput.ReadToEnd();
        var stderr = p.StandardError.ReadToEnd();
        p.WaitForExit();
        if (p.ExitCode != 0) throw new InvalidOperationException($"child '{config}' failed ({p.ExitCode}): {stderr}");
        var json = JsonNode.Parse(stdout)!;
        foreach (var row in json["rows"]!.AsArray())
        {
            var r = row!.AsObject();
            result.Add($"{config}: {r["case"]}", r["value"]!.GetValue<double>(), r["unit"]!.GetValue<string>(), r["detail"]!.GetValue<string>());
        }
    }

    static BenchResult Child(string config, int steps)
    {
        var parts = config.Split('/');
        var (baseKind, optimName) = (parts[0], parts[1]);
        torch.manual_seed(0);
        var model = BenchLlama();
        if (baseKind != "lora-fp32")
        {
            var q = new BitsAndBytesConfig { LoadIn4bit = true, Bnb4bitQuantType = baseKind.Contains("nf4") ? "nf4" : "fp4", Bnb4bitUseDoubleQuant = baseKind.Contains("dq") };
            QuantizedModelLoader.Quantize(model, q);
            KbitTraining.Prepare(model, useGradientCheckpointing: false);
        }
        var peft = BenchAdapters.Create(model, "lora", BenchAdapters.Lora(16));
        var trainable = peft.named_parameters().Where(p => p.parameter.requires_grad).Select(p => (p.name, (Tensor)p.parameter)).ToList();
        var bnb = BnbAdamWOptions.FromOptimName(optimName);
        using var opt = bnb is null ? null : new BnbAdamW(trainable, lr: 2e-4, options: bnb);
        var torchOpt = bnb is null ? optim.AdamW(peft.parameters().Where(p => p.requires_grad), lr: 2e-4) : null;
        long modelBytes = model.state_dict().Values.Sum(t => t.numel() * t.element_size());
        TorchRuntime.TrimMemory();
        long setupRss = Status("VmRSS");
        // Peak from here on: our loader builds the float model before quantizing it, which a streaming loader would not.
        File.WriteAllText("/proc/self/clear_refs", "5");

        var gen = new Generator(1);
        var ids = randint(0, 8192, new long[] { 4, 257 }, generator: gen);
        var input = ids[.., ..^1];
        var labels = ids[.., 1..].reshape(-1);
        peft.train();
        var times = new List<double>();
        float loss = 0;
        for (int i = 0; i < steps + 1; i++)
        {
            var sw = Stopwatch.StartNew();
            using (var scope = NewDisposeScope())
            {
                var logits = peft.Forward(new ModelInputs { InputIds = input }).Logits;
                var l = nn.functional.cross_entropy(logits.reshape(-1, 8192), labels);
                l.backward();
                loss = l.item<float>();
                if (opt is not null) { opt.Step(); opt.ZeroGrad(); }
                else { torchOpt!.step(); torchOpt.zero_grad(); }
            }
            if (i > 0) times.Add(sw.Elapsed.TotalSeconds);
        }
        times.Sort();
        var r = new BenchResult { Columns = new[] { "case", "value", "unit", "detail" } };
        r.Add("peak RSS (training)", Status("VmHWM") / 1024.0, "MiB", $"VmHWM after a reset once the model was ready; RSS then {setupRss / 1024.0:F0} MiB");
        r.Add("step time", times[times.Count / 2], "s", $"median of {steps} steps after 1 warm-up, batch 4 x seq 256, last loss {loss:F3}");
        r.Add("model state", modelBytes / 1048576.0, "MiB", $"state_dict bytes; trainable {trainable.Sum(t => t.Item2.numel()):N0} params");
        if (opt is not null) r.Add("optimizer state", opt.StateBytes / 1048576.0, "MiB", optimName);
        return r;
    }

    static long Status(string key)
    {
        var line = File.ReadLines("/proc/self/status").First(l => l.StartsWith(key + ":", StringComparison.Ordinal));
        return long.Parse(line.Split(' ', StringSplitOptions.RemoveEmptyEntries)[1]);
    }

    static PreTrainedModel BenchLlama() => Llama(512, 8, 8, 1376, 8192);

    static PreTrainedModel Llama(int hidden, int layers, int heads, int intermediate, int vocab) =>
        AutoModel.FromConfig(AutoModel.ParseConfig(new JsonObject
        {
            ["model_type"] = "llama", ["hidden_size"] = hidden, ["num_hidden_layers"] = layers, ["num_attention_heads"] = heads,
            ["num_key_value_heads"] = heads, ["intermediate_size"] = intermediate, ["vocab_size"] = vocab, ["tie_word_embeddings"] = false,
            ["max_position_embeddings"] = 512, ["rms_norm_eps"] = 1e-6, ["initializer_range"] = 0.02,
        }, "bench llama"));

    // ---- quality: perplexity of 4-bit bases ----

    /// <summary>
    /// Trains a byte-level Llama (hidden 256, 4 layers, 4 heads, intermediate 688, vocab 256) on 90% of a generated
    /// English-like corpus, then measures held-out perplexity of the float32 model and of its NF4, NF4+DQ and FP4
    /// quantizations (every linear layer except lm_head, as transformers does).
    /// </summary>
    static void Quality(int steps, BenchResult result)
    {
        torch.manual_seed(0);
        var bytes = Encoding.ASCII.GetBytes(Corpus());
        int split = bytes.Length * 9 / 10;
        var data = tensor(bytes.Select(b => (long)b).ToArray());
        var train = data.narrow(0, 0, split);
        var heldOut = data.narrow(0, split, bytes.Length - split);

        var model = Llama(256, 4, 4, 688, 256);
        var opt = optim.AdamW(model.parameters(), lr: 3e-3, weight_decay: 0.0);
        var gen = new Generator(3);
        model.train();
        float loss = 0;
        var sw = Stopwatch.StartNew();
        for (int i = 0; i < steps; i++)
        {
            using var scope = NewDisposeScope();
            var starts = randint(0, split - 129, new long[] { 8 }, generator: gen);
            var batch = stack(starts.data<long>().ToArray().Select(s => train.narrow(0, s, 129)).ToArray());
            var logits = model.Forward(batch[.., ..^1]).Logits;
            var l = nn.functional.cross_entropy(logits.reshape(-1, 256), batch[.., 1..].reshape(-1));
            opt.zero_grad();
            l.backward();
            opt.step();
            loss = l.item<float>();
        }
        model.eval();
        double fp32 = Perplexity(model, heldOut);
        result.Add("ppl fp32 base", fp32, "ppl", $"byte-level Llama 256x4, {steps} AdamW steps (8 x 128 bytes, {sw.Elapsed.TotalSeconds:F0} s), last train loss {loss:F3}; held-out {bytes.Length - split:N0} bytes");
        var state = model.state_dict().ToDictionary(kv => kv.Key, kv => kv.Value.detach().clone());
        foreach (var (label, type, dq) in new[] { ("NF4", "nf4", false), ("NF4 + DQ", "nf4", true), ("FP4", "fp4", false) })
        {
            var copy = Llama(256, 4, 4, 688, 256);
            copy.load_state_dict(state);
            QuantizedModelLoader.Quantize(copy, new BitsAndBytesConfig { LoadIn4bit = true, Bnb4bitQuantType = type, Bnb4bitUseDoubleQuant = dq });
            copy.eval();
            double ppl = Perplexity(copy, heldOut);
            result.Add($"ppl {label} base", ppl, "ppl", $"{(ppl / fp32 - 1) * 100:+0.00;-0.00}% vs fp32");
            copy.Dispose();
        }
    }

    static double Perplexity(PreTrainedModel model, Tensor tokens)
    {
        using var _ = no_grad();
        double nll = 0;
        long count = 0;
        for (long s = 0; s + 2 <= tokens.shape[0]; s += 128)
        {
            using var scope = NewDisposeScope();
            long len = Math.Min(129, tokens.shape[0] - s);
            var chunk = tokens.narrow(0, s, len).unsqueeze(0);
            var logits = model.Forward(chunk[.., ..^1]).Logits;
            nll += nn.functional.cross_entropy(logits.reshape(-1, 256), chunk[.., 1..].reshape(-1), reduction: nn.Reduction.Sum).item<float>();
            count += len - 1;
        }
        return Math.Exp(nll / count);
    }

    /// <summary>A deterministic English-like corpus: templated sentences over small word lists (no external data).</summary>
    static string Corpus()
    {
        string[] subjects = { "the farmer", "a young child", "the old teacher", "my neighbour", "the quiet engineer", "a tired doctor", "the baker", "our captain" };
        string[] verbs = { "carried", "painted", "found", "repaired", "sold", "wanted", "described", "forgot" };
        string[] objects = { "a wooden chair", "the red bicycle", "three small boxes", "an old map", "the broken clock", "a basket of apples", "the heavy door", "a letter" };
        string[] places = { "near the river", "in the kitchen", "after the storm", "before dinner", "at the market", "on the hill", "during the winter", "behind the school" };
        string[] endings = { "and smiled.", "without a word.", "for the second time.", "with great care.", "because it was late.", "while it rained." };
        var rng = new Random(11);
        var sb = new StringBuilder();
        for (int i = 0; i < 4000; i++)
        {
            string Pick(string[] a) => a[rng.Next(a.Length)];
            var s = $"{Pick(subjects)} {Pick(verbs)} {Pick(objects)} {Pick(places)} {Pick(endings)} ";
            sb.Append(char.ToUpperInvariant(s[0])).Append(s.AsSpan(1));
            if (rng.Next(6) == 0) sb.Append('\n');
        }
        return sb.ToString();
    }
}
