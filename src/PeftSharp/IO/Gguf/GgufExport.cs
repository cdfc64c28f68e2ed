using System.Runtime.InteropServices;
using System.Text.Json;
using System.Text.RegularExpressions;
using PeftSharp.Models;
using PeftSharp.Tuners;
using static TorchSharp.torch;

namespace PeftSharp.IO.Gguf;

/// <summary>Storage of the exported weights: f32, f16 or q8_0 (1-D tensors such as norms and biases stay f32, as llama.cpp's converter keeps them).</summary>
public enum GgufDType { F32, F16, Q8_0 }

/// <summary>
/// Writes a model (merged with its adapters beforehand) as a GGUF file llama.cpp loads, or a LoRA adapter as a GGUF
/// LoRA adapter llama.cpp applies at load. Follows llama.cpp's convert_hf_to_gguf / convert_lora_to_gguf: tensor names
/// (token_embd, blk.N.attn_q, ...), Llama/Mistral q and k rows permuted from HF's rotate-half to ggml's interleaved rope
/// (Qwen2 keeps rotate-half, llama.cpp runs it as NEOX rope), GPT-2's Conv1D weights transposed to [out, in].
/// </summary>
public static class GgufExport
{
    /// <summary>How each HF model_type is written: llama.cpp's architecture name and whether q/k rows are permuted.</summary>
    sealed record ArchInfo(string Name, bool PermuteQk);

    static readonly Dictionary<string, ArchInfo> Archs = new()
    {
        ["llama"] = new("llama", true),
        ["mistral"] = new("llama", true),
        ["qwen2"] = new("qwen2", false),
        ["gpt2"] = new("gpt2", false),
    };

    static ArchInfo Arch(ModelConfig c) => Archs.TryGetValue(c.ModelType, out var a) ? a
        : throw new PeftConfigException($"GGUF export supports model_type {string.Join(", ", Archs.Keys)}; this model is '{c.ModelType}'");

    /// <summary>
    /// What llama.cpp will compute differently from this model, one line each (the CLI prints them as warnings): a
    /// sliding attention window, which llama.cpp's llama and qwen2 graphs do not apply, so outputs differ once a
    /// sequence is longer than the window.
    /// </summary>
    public static IEnumerable<string> Caveats(ModelConfig c)
    {
        if (c is not LlamaConfig l) yield break;
        var window = Enumerable.Range(0, l.NumHiddenLayers).Select(l.SlidingWindowOf).Where(w => w is not null).Min();
        if (window is int w && w < l.MaxPositionEmbeddings)
            yield return $"{c.ModelType} uses a sliding attention window of {w} tokens; llama.cpp's {Arch(c).Name} graph attends to the whole context, so its outputs differ from this model's once a sequence is longer than {w} tokens";
    }

    /// <summary>Writes <paramref name="model"/> (no adapter layers left: merge first) with the tokenizer and chat template of <paramref name="tokenizerDir"/>.</summary>
    public static GgufWriter Model(PreTrainedModel model, string tokenizerDir, GgufDType dtype, string name)
    {
        var c = model.Config;
        var arch = Arch(c);
        var w = new GgufWriter();
        w.Add("general.architecture", GgufValue.Str(arch.Name));
        w.Add("general.type", GgufValue.Str("model"));
        w.Add("general.name", GgufValue.Str(name));
        w.Add("general.file_type", GgufValue.U32(dtype switch { GgufDType.F32 => 0u, GgufDType.F16 => 1u, _ => 7u }));
        w.Add("general.quantization_version", GgufValue.U32(2));
        AddHyperparameters(w, arch.Name, c);
        GgufVocab.Add(w, tokenizerDir, c.ModelType, c.VocabSize, c.BosTokenId, c.EosTokenIds.Count > 0 ? c.EosTokenIds[0] : null);

        var state = model.state_dict();
        foreach (var (key, tensor) in state)
        {
            if (model.TiedKeys.Contains(key) || IsBuffer(key)) continue;
            var ggufName = TensorName(c.ModelType, key) ?? throw new PeftFormatException(null, $"GGUF export: no llama.cpp tensor name for '{key}' of {c.ModelType}");
            var data = tensor;
            if (c.ModelType == "gpt2" && IsConv1DWeight(key)) data = tensor.t();
            if (arch.PermuteQk && PermuteHeads(key, c) is int heads) data = Permute(tensor, heads);
            AddTensor(w, ggufName, data, dtype);
        }
        // GPT-2's output layer is its token embedding; llama.cpp's gpt2 graph reads output.weight.
        if (c.ModelType == "gpt2") AddTensor(w, "output.weight", state["transformer.wte.weight"], dtype);
        return w;
    }

    /// <summary>
    /// The active adapter of <paramref name="peft"/> as a GGUF LoRA adapter (general.type adapter, adapter.type lora,
    /// per module NAME.weight.lora_a [r, in] and .lora_b [out, r]). Each module's own scale is folded into lora_b and
    /// adapter.lora.alpha is 0, which llama.cpp reads as "scale 1", so rank and alpha patterns and rsLoRA carry over exactly.
    /// </summary>
    public static GgufWriter LoraAdapter(PeftModel peft, GgufDType dtype, string name)
    {
        var c = peft.Model.Config;
        var arch = Arch(c);
        var adapter = peft.ActiveAdapter;
        var w = new GgufWriter();
        w.Add("general.architecture", GgufValue.Str(arch.Name));
        w.Add("general.type", GgufValue.Str("adapter"));
        w.Add("general.name", GgufValue.Str(name));
        w.Add("adapter.type", GgufValue.Str("lora"));
        w.Add("adapter.lora.alpha", GgufValue.F32(0));
        int written = 0;
        foreach (var (module, layer) in peft.AdapterLayers())
        {
            if (!layer.Adapters.Contains(adapter)) continue;
            var factors = (layer as ILowRankLayer)?.LowRankFactors(adapter)
                ?? throw new PeftConfigException($"GGUF LoRA export: module '{module}' of adapter '{adapter}' is not a plain LoRA update (DoRA, other methods and embedding LoRA cannot be a GGUF LoRA adapter); export the merged model instead");
            var key = module + ".weight";
            var ggufName = TensorName(c.ModelType, key) ?? throw new PeftFormatException(null, $"GGUF export: no llama.cpp tensor name for '{key}' of {c.ModelType}");
            var up = factors.Up * factors.Scale;
            if (arch.PermuteQk && PermuteHeads(key, c) is int heads) up = Permute(up, heads); // rows of B are the weight's rows
            // Adapter factors are small: f32 unless f16 is asked for (q8_0 would need r to be a multiple of 32).
            var factorType = dtype == GgufDType.F16 ? GgufDType.F16 : GgufDType.F32;
            AddTensor(w, ggufName + ".lora_a", factors.Down, factorType);
            AddTensor(w, ggufName + ".lora_b", up, factorType);
            written++;
        }
        if (written == 0) throw new PeftConfigException($"adapter '{adapter}' adapts no linear layer; nothing to write as a GGUF LoRA adapter");
        return w;
    }

    static void AddHyperparameters(GgufWriter w, string arch, ModelConfig c)
    {
        void U32(string key, int v) => w.Add($"{arch}.{key}", GgufValue.U32((uint)v));
        U32("vocab_size", c.VocabSize);
        U32("embedding_length", c.HiddenSize);
        U32("block_count", c.NumHiddenLayers);
        U32("attention.head_count", c.NumAttentionHeads);
        switch (c)
        {
            case LlamaConfig l:
                U32("context_length", l.MaxPositionEmbeddings);
                U32("feed_forward_length", l.IntermediateSize);
                U32("attention.head_count_kv", l.NumKeyValueHeads);
                U32("rope.dimension_count", l.HeadDim);
                U32("attention.key_length", l.HeadDim);
                U32("attention.value_length", l.HeadDim);
                w.Add($"{arch}.attention.layer_norm_rms_epsilon", GgufValue.F32((float)l.RmsNormEps));
                w.Add($"{arch}.rope.freq_base", GgufValue.F32((float)l.RopeTheta));
                if (l.RopeScaling is { ValueKind: JsonValueKind.Object } rs)
                {
                    var type = rs.TryGetProperty("rope_type", out var t) || rs.TryGetProperty("type", out t) ? t.GetString() : null;
                    if (type != "linear" || !rs.TryGetProperty("factor", out var f))
                        throw new PeftConfigException($"GGUF export: rope_scaling type '{type}' is not exported (linear only)");
                    w.Add($"{arch}.rope.scaling.type", GgufValue.Str("linear"));
                    w.Add($"{arch}.rope.scaling.factor", GgufValue.F32(f.GetSingle()));
                }
                break;
            case GPT2Config g:
                U32("context_length", g.NPositions);
                U32("feed_forward_length", g.NInner ?? 4 * g.HiddenSize);
                w.Add($"{arch}.attention.layer_norm_epsilon", GgufValue.F32((float)g.LayerNormEpsilon));
                break;
        }
    }

    static readonly Regex LlamaLayer = new(@"^model\.layers\.(\d+)\.(.+)$", RegexOptions.CultureInvariant);
    static readonly Regex Gpt2Layer = new(@"^transformer\.h\.(\d+)\.(.+)$", RegexOptions.CultureInvariant);

    static readonly Dictionary<string, string> LlamaBlock = new()
    {
        ["input_layernorm"] = "attn_norm", ["self_attn.q_proj"] = "attn_q", ["self_attn.k_proj"] = "attn_k", ["self_attn.v_proj"] = "attn_v",
        ["self_attn.o_proj"] = "attn_output", ["post_attention_layernorm"] = "ffn_norm", ["mlp.gate_proj"] = "ffn_gate",
        ["mlp.up_proj"] = "ffn_up", ["mlp.down_proj"] = "ffn_down",
    };

    static readonly Dictionary<string, string> Gpt2Block = new()
    {
        ["ln_1"] = "attn_norm", ["attn.c_attn"] = "attn_qkv", ["attn.c_proj"] = "attn_output", ["ln_2"] = "ffn_norm",
        ["mlp.c_fc"] = "ffn_up", ["mlp.c_proj"] = "ffn_down",
    };

    /// <summary>llama.cpp's name for an HF parameter key, or null when it has none.</summary>
    public static string? TensorName(string modelType, string key)
    {
        int dot = key.LastIndexOf('.');
        var (module, param) = (key[..dot], key[(dot + 1)..]);
        if (modelType == "gpt2")
        {
            var global = module switch { "transformer.wte" => "token_embd", "transformer.wpe" => "position_embd", "transformer.ln_f" => "output_norm", _ => null };
            if (global is not null) return $"{global}.{param}";
            var m = Gpt2Layer.Match(module);
            return m.Success && Gpt2Block.TryGetValue(m.Groups[2].Value, out var b) ? $"blk.{m.Groups[1].Value}.{b}.{param}" : null;
        }
        var top = module switch { "model.embed_tokens" => "token_embd", "model.norm" => "output_norm", "lm_head" => "output", _ => null };
        if (top is not null) return $"{top}.{param}";
        var l = LlamaLayer.Match(module);
        return l.Success && LlamaBlock.TryGetValue(l.Groups[2].Value, out var n) ? $"blk.{l.Groups[1].Value}.{n}.{param}" : null;
    }

    static bool IsConv1DWeight(string key) => key.EndsWith(".weight", StringComparison.Ordinal) &&
        (key.Contains(".attn.c_attn.", StringComparison.Ordinal) || key.Contains(".attn.c_proj.", StringComparison.Ordinal) || key.Contains(".mlp.c_", StringComparison.Ordinal));

    // Buffers some architectures keep in the state dict (GPT-2's causal mask).
    static bool IsBuffer(string key) => key.EndsWith(".attn.bias", StringComparison.Ordinal) || key.EndsWith(".attn.masked_bias", StringComparison.Ordinal);

    static int? PermuteHeads(string key, ModelConfig c) => c is LlamaConfig l
        ? key.Contains(".self_attn.q_proj.", StringComparison.Ordinal) ? l.NumAttentionHeads
        : key.Contains(".self_attn.k_proj.", StringComparison.Ordinal) ? l.NumKeyValueHeads : null
        : null;

    /// <summary>HF rotate-half rows → ggml's interleaved pairs, per head (convert_hf_to_gguf's LlamaModel.permute).</summary>
    static Tensor Permute(Tensor t, int heads)
    {
        var shape = t.shape;
        var rest = shape.Skip(1).ToArray();
        return t.reshape([heads, 2, shape[0] / heads / 2, .. rest]).swapaxes(1, 2).reshape(shape);
    }

    static void AddTensor(GgufWriter w, string name, Tensor tensor, GgufDType dtype)
    {
        var shape = tensor.shape;
        var type = shape.Length < 2 || dtype == GgufDType.F32 ? GgmlType.F32
            : dtype == GgufDType.F16 || shape[^1] % Gguf.Q8BlockSize != 0 ? GgmlType.F16 // q8_0 needs whole blocks per row
            : GgmlType.Q8_0;
        var source = tensor.detach();
        w.AddTensor(name, shape, type, () =>
        {
            using var scope = NewDisposeScope();
            var f = source.to(ScalarType.Float32).cpu().contiguous();
            return type switch
            {
                GgmlType.F32 => MemoryMarshal.AsBytes(f.data<float>().ToArray().AsSpan()).ToArray(),
                GgmlType.F16 => MemoryMarshal.AsBytes(f.to(ScalarType.Float16).data<Half>().ToArray().AsSpan()).ToArray(),
                _ => Q8_0.Quantize(f.data<float>().ToArray()),
            };
        });
    }
}
