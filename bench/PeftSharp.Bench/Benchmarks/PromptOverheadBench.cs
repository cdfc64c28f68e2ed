using System.Text.Json.Nodes;
using PeftSharp.Inference;
using PeftSharp.Models;
using PeftSharp.Tuners;
using PeftSharp.Tuners.AdaptionPrompt;
using PeftSharp.Tuners.PrefixTuning;
using PeftSharp.Tuners.PromptTuning;
using PeftSharp.Tuners.PTuning;
using TorchSharp;
using static TorchSharp.torch;

namespace PeftSharp.Bench.Benchmarks;

/// <summary>
/// Inference latency overhead of the prompt family against the base model, for a full forward (prompt methods
/// lengthen the sequence) and per generated token (prefix methods carry extra keys/values at every step).
/// Adapters are in their loaded (inference) form. Options: --hidden 512 --layers 4 --seq 64 --rows 8 --nvt 20
/// --new 16 --repeat 5 --threads 2.
/// </summary>
public sealed class PromptOverheadBench : IBenchmark
{
    public string Name => "prompt-overhead";
    public string Description => "Prompt Tuning / P-Tuning / Prefix Tuning / LLaMA-Adapter: forward and per-token generation latency vs the base model";

    public BenchResult Run(BenchOptions o)
    {
        int hidden = o.GetInt("hidden", 512), layers = o.GetInt("layers", 4), seq = o.GetInt("seq", 64), rows = o.GetInt("rows", 8);
        int nvt = o.GetInt("nvt", 20), newTokens = o.GetInt("new", 16), repeat = o.GetInt("repeat", 5), threads = o.GetInt("threads", 2);
        torch.set_num_threads(threads);
        manual_seed(0);
        var config = AutoModel.ParseConfig(new JsonObject
        {
            ["model_type"] = "llama", ["hidden_size"] = hidden, ["num_hidden_layers"] = layers, ["num_attention_heads"] = hidden / 64,
            ["num_key_value_heads"] = hidden / 128, ["intermediate_size"] = hidden * 8 / 3 / 64 * 64, ["vocab_size"] = 4096,
            ["tie_word_embeddings"] = false, ["rms_norm_eps"] = 1e-6,
        }, "bench config");
        var cases = new (string Label, PeftConfig? Config)[]
        {
            ("base model", null),
            ($"prompt tuning (nvt {nvt})", new PromptTuningConfig { NumVirtualTokens = nvt, InferenceMode = true }),
            ($"p-tuning (nvt {nvt}, loaded form)", new PromptEncoderConfig { NumVirtualTokens = nvt, InferenceMode = true }),
            ($"prefix tuning / p-tuning v2 (nvt {nvt})", new PrefixTuningConfig { NumVirtualTokens = nvt, InferenceMode = true }),
            ($"llama-adapter (len 10, {layers} layers)", new AdaptionPromptConfig { AdapterLen = 10, AdapterLayers = layers, InferenceMode = true }),
        };
        var ids = randint(0, 4096, new long[] { rows, seq });
        var prompt = new[] { Enumerable.Range(0, seq).Select(i => (int)ids[0, i].item<long>()).ToArray() };
        var options = new GenerationOptions { MaxNewTokens = newTokens, EosTokenIds = Array.Empty<int>(), PadTokenId = 0 };
        var result = new BenchResult { Columns = new[] { "method", "forward CPU ms", "forward overhead %", "generate CPU ms/token", "generate overhead %" } };
        double baseForward = 0, baseToken = 0;
        using var _ = no_grad();
        // The first model timed would otherwise pay the JIT and allocator warm-up for all.
        using (var warm = AutoModel.FromConfig(config)) { warm.eval(); new TextGenerator(warm).Generate(prompt, options); warm.Forward(ids).Logits.Dispose(); }
        foreach (var (label, peftConfig) in cases)
        {
            using var scope = NewDisposeScope();
            manual_seed(0);
            var model = AutoModel.FromConfig(config);
            ILanguageModel lm = peftConfig is null ? model : PeftModel.Create(model, peftConfig);
            if (lm is nn.Module m) m.eval();
            var inputs = new ModelInputs { InputIds = ids };
            var (_, _, forward) = LoraForwardBench.Time(() => lm.Forward(inputs).Logits.Dispose(), repeat);
            var generator = new TextGenerator(lm);
            var (_, _, gen) = LoraForwardBench.Time(() => generator.Generate(prompt, options), repeat);
            double perToken = gen / newTokens;
            if (peftConfig is null) { baseForward = forward; baseToken = perToken; }
            result.Add(label, forward, 100 * (forward / baseForward - 1), perToken, 100 * (perToken / baseToken - 1));
        }
        result.Notes.Add($"Llama hidden {hidden}, {layers} layers, GQA {hidden / 64}/{hidden / 128} heads, vocab 4096, float32, {threads} threads; forward: batch {rows}x{seq}; generate: 1 row, {seq}-token prompt, {newTokens} new tokens (prompt pass included, ms/token = total / new tokens); figures are the minimum process CPU time of {repeat} runs after 2 warm-ups (steadier than wall time on a shared machine).");
        result.Notes.Add("P-Tuning is timed in its loaded form (a table, like prompt tuning); while training its MLP/LSTM encoder runs once per forward.");
        return result;
    }
}
