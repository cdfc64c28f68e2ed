using System.Text.Json;
using LLama;
using LLama.Common;
using LLama.Native;
using PeftSharp.IO.Gguf;
using PeftSharp.Models;
using PeftSharp.Tests.Cli;
using PeftSharp.Tests.Models;
using PeftSharp.Tuners;
using PeftSharp.Tuners.Lora;
using static TorchSharp.torch;

namespace PeftSharp.Tests.IO;

/// <summary>
/// `peft export --format gguf` checked by the real llama.cpp (LLamaSharp 0.30.0's CPU build): greedy ids from llama.cpp
/// equal `peft generate` on the real stories260K model, on a merged LoRA of it and with the LoRA as a GGUF adapter
/// applied at load; and the file re-read with our own GGUF reader.
/// </summary>
public class GgufExportTests
{
    static GgufExportTests()
    {
        // Quiet llama.cpp's loader; must be set before the native library loads.
        NativeLibraryConfig.All.WithLogCallback((_, _) => { });
    }

    static string Export(params string[] args)
    {
        var (code, stdout, stderr) = CliRunner.Run(["export", "--format", "gguf", .. args, "--json"]);
        Assert.True(code == 0, stderr);
        return JsonDocument.Parse(stdout).RootElement.GetProperty("out").GetString()!;
    }

    /// <summary>Greedy decoding in llama.cpp (argmax of the logits, stopping at EOS), optionally with a GGUF LoRA adapter.</summary>
    static int[] LlamaCppGreedy(string gguf, int[] prompt, int maxNew, string? lora = null, int eos = 2)
    {
        var p = new ModelParams(gguf) { ContextSize = 256, GpuLayerCount = 0, BatchSize = 256 };
        using var weights = LLamaWeights.LoadFromFile(p);
        using var context = weights.CreateContext(p);
        if (lora is not null)
        {
            var adapter = weights.NativeHandle.LoadLoraFromFile(lora);
            context.NativeHandle.SetLoraAdapters(new[] { (adapter, 1f) });
        }
        var batch = new LLamaBatch();
        for (int i = 0; i < prompt.Length; i++) batch.Add(prompt[i], i, LLamaSeqId.Zero, i == prompt.Length - 1);
        var result = new List<int>();
        for (int pos = prompt.Length; result.Count < maxNew; pos++)
        {
            Assert.Equal(DecodeResult.Ok, context.NativeHandle.Decode(batch));
            var logits = context.NativeHandle.GetLogitsIth(batch.TokenCount - 1);
            int next = 0;
            for (int v = 1; v < logits.Length; v++) if (logits[v] > logits[next]) next = v;
            result.Add(next);
            if (next == eos) break;
            batch.Clear();
            batch.Add(next, pos, LLamaSeqId.Zero, true);
        }
        return result.ToArray();
    }

    static int[] PeftGreedy(string model, int[] prompt, int maxNew, string? adapter = null)
    {
        var args = new List<string> { "generate", "--model", model, "--input-ids", string.Join(' ', prompt), "--max-new-tokens", maxNew.ToString(), "--json" };
        if (adapter is not null) args.AddRange(["--adapter", adapter]);
        var (code, stdout, stderr) = CliRunner.Run(args.ToArray());
        Assert.True(code == 0, stderr);
        var row = JsonDocument.Parse(stdout).RootElement.GetProperty("rows")[0];
        return row.GetProperty("new_ids").EnumerateArray().Select(x => x.GetInt32()).ToArray();
    }

    [Fact]
    public void Llama_cpp_runs_the_exported_stories260K_greedily_as_documented()
    {
        var dir = TestPaths.TempDir();
        var gguf = Export("--model", Stories260KTests.ModelDir, "--out", Path.Combine(dir, "stories.gguf"), "--dtype", "f32");

        var p = new ModelParams(gguf) { ContextSize = 64, GpuLayerCount = 0 };
        using (var weights = LLamaWeights.LoadFromFile(p))
            Assert.Equal(Stories260KTests.Prompt, weights.Tokenize("Once upon a time", add_bos: true, special: false, System.Text.Encoding.UTF8).Select(t => (int)t));
        Assert.Equal(Stories260KTests.GreedyNew, LlamaCppGreedy(gguf, Stories260KTests.Prompt, Stories260KTests.GreedyNew.Length));
        Directory.Delete(dir, recursive: true);
    }

    /// <summary>A LoRA adapter on every linear layer of stories260K with random (non-zero) B, saved as a peft folder.</summary>
    static string RandomLora(string dir, bool rsLora)
    {
        manual_seed(7);
        using var peft = PeftModel.Create(AutoModel.FromPretrained(Stories260KTests.ModelDir),
            new LoraConfig { R = 4, LoraAlpha = 8, UseRsLora = rsLora, TargetModules = StringOrList.Of("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"), TaskType = "CAUSAL_LM" });
        using (no_grad())
            foreach (var (name, p) in peft.Model.named_parameters().Where(p => p.name.Contains("lora_B")))
                p.copy_(randn_like(p) * 0.05);
        var path = Path.Combine(dir, "lora");
        peft.SaveAdapter(path);
        return path;
    }

    [Fact]
    public void Merged_lora_and_gguf_lora_adapter_give_peft_generate_ids_in_llama_cpp()
    {
        var dir = TestPaths.TempDir();
        var adapter = RandomLora(dir, rsLora: true);
        int[] prompt = [1, 403, 407, 261, 378];
        var expected = PeftGreedy(Stories260KTests.ModelDir, prompt, 24, adapter);
        Assert.NotEqual(Stories260KTests.GreedyNew[..expected.Length], expected); // the adapter changes the story

        var merged = Export("--model", Stories260KTests.ModelDir, "--adapter", adapter, "--out", Path.Combine(dir, "merged.gguf"), "--dtype", "f32");
        var baseGguf = Export("--model", Stories260KTests.ModelDir, "--out", Path.Combine(dir, "base.gguf"), "--dtype", "f32");
        var loraGguf = Export("--model", Stories260KTests.ModelDir, "--adapter", adapter, "--lora-only", "--out", Path.Combine(dir, "lora.gguf"), "--dtype", "f32");
        var mergedIds = LlamaCppGreedy(merged, prompt, 24);
        var loraIds = LlamaCppGreedy(baseGguf, prompt, 24, lora: loraGguf);
        Assert.Equal(expected, mergedIds);
        Assert.Equal(expected, loraIds);

        var reader = GgufReader.Open(loraGguf);
        Assert.Equal("adapter", reader.Metadata["general.type"].AsString());
        Assert.Equal("lora", reader.Metadata["adapter.type"].AsString());
        Assert.Equal(35 * 2, reader.Tensors.Count); // 7 projections x 5 blocks, lora_a and lora_b
        Assert.Equal(new long[] { 4, 64 }, reader.Tensor("blk.0.attn_q.weight.lora_a").TorchShape);
        Assert.Equal(new long[] { 64, 4 }, reader.Tensor("blk.0.attn_q.weight.lora_b").TorchShape);
        Directory.Delete(dir, recursive: true);
    }

    /// <summary>
    /// A model folder for a tiny test model with a real tokenizer cut down to the model's embedding rows (ids below
    /// <paramref name="vocabSize"/>, merges among them; a byte-level vocabulary's end-of-text token takes the last id),
    /// so llama.cpp loads the vocabulary the export embeds.
    /// </summary>
    static string WithTruncatedTokenizer(string model, string tokenizer, int vocabSize)
    {
        var dir = TestPaths.TempDir();
        foreach (var f in Directory.GetFiles(TestPaths.Model(model))) File.Copy(f, Path.Combine(dir, Path.GetFileName(f)));
        var root = System.Text.Json.Nodes.JsonNode.Parse(File.ReadAllText(Path.Combine(TestPaths.Data("tokenizers", tokenizer), "tokenizer.json")))!.AsObject();
        var m = root["model"]!.AsObject();
        var added = root["added_tokens"]!.AsArray().Select(t => t!.AsObject()).ToList();
        bool byteLevel = m["byte_fallback"]?.GetValue<bool>() != true;
        int last = byteLevel ? vocabSize - 1 : vocabSize;
        var vocab = m["vocab"]!.AsObject().Where(kv => kv.Value!.GetValue<int>() < last).ToDictionary(kv => kv.Key, kv => kv.Value!.GetValue<int>());
        var keep = added.Where(t => t["id"]!.GetValue<int>() < last).Select(t => t.DeepClone()).ToList();
        if (byteLevel)
        {
            var eot = added[0].DeepClone().AsObject();
            eot["id"] = last;
            keep.Add(eot);
        }
        static (string, string) Pair(System.Text.Json.Nodes.JsonNode n) => n is System.Text.Json.Nodes.JsonArray a
            ? (a[0]!.GetValue<string>(), a[1]!.GetValue<string>())
            : n.GetValue<string>().Split(' ') is [var x, var y] ? (x, y) : ("", "");
        var merges = m["merges"]!.AsArray().Where(n => Pair(n!) is var (a, b) && vocab.ContainsKey(a) && vocab.ContainsKey(b) && vocab.ContainsKey(a + b))
            .Select(n => n!.DeepClone()).ToArray();
        m["vocab"] = new System.Text.Json.Nodes.JsonObject(vocab.Select(kv => KeyValuePair.Create(kv.Key, (System.Text.Json.Nodes.JsonNode?)kv.Value)));
        m["merges"] = new System.Text.Json.Nodes.JsonArray(merges);
        root["added_tokens"] = new System.Text.Json.Nodes.JsonArray(keep.ToArray());
        File.WriteAllText(Path.Combine(dir, "tokenizer.json"), root.ToJsonString());
        return dir;
    }

    // GPT-2, Qwen2 (biased q/k/v, tied embeddings) and Mistral (GQA; llama.cpp's llama graph has no sliding window, so
    // prompt and answer stay within mistral-tiny's window of 6) as llama.cpp's gpt2, qwen2 and llama architectures.
    [Theory]
    [InlineData("gpt2-tiny", "gpt2", 12)]
    [InlineData("qwen2-tiny", "qwen3", 12)]
    [InlineData("mistral-tiny", "mistral", 3)]
    public void Llama_cpp_gives_peft_generate_ids_on_gpt2_qwen2_and_mistral_exports(string model, string tokenizer, int maxNew)
    {
        var dir = WithTruncatedTokenizer(model, tokenizer, 320);
        int[] prompt = [1, 57, 211];
        var expected = PeftGreedy(dir, prompt, maxNew);
        var (code, stdout, stderr) = CliRunner.Run("export", "--model", dir, "--out", Path.Combine(dir, "model.gguf"), "--dtype", "f32", "--json");
        Assert.True(code == 0, stderr);
        var gguf = JsonDocument.Parse(stdout).RootElement.GetProperty("out").GetString()!;
        // mistral-tiny's window (6) is below its context (128): the export says llama.cpp will not apply it.
        Assert.Equal(model == "mistral-tiny", stderr.Contains("sliding attention window of 6 tokens"));
        Assert.True(expected.Length == maxNew && expected.Distinct().Count() > 1, $"a degenerate greedy run: {string.Join(' ', expected)}");
        Assert.Equal(expected, LlamaCppGreedy(gguf, prompt, maxNew));
        Directory.Delete(dir, recursive: true);
    }

    [Fact]
    public void Exported_file_reads_back_with_its_metadata_tokenizer_and_weights()
    {
        var dir = TestPaths.TempDir();
        var f32 = Export("--model", Stories260KTests.ModelDir, "--out", Path.Combine(dir, "f32.gguf"), "--dtype", "f32");
        var q8 = Export("--model", Stories260KTests.ModelDir, "--out", Path.Combine(dir, "q8.gguf"), "--dtype", "q8_0");
        var r = GgufReader.Open(f32);
        Assert.Equal(3u, r.Version);
        Assert.Equal("llama", r.Metadata["general.architecture"].AsString());
        Assert.Equal(5u, r.Metadata["llama.block_count"].AsU32());
        Assert.Equal(8u, r.Metadata["llama.attention.head_count"].AsU32());
        Assert.Equal(4u, r.Metadata["llama.attention.head_count_kv"].AsU32());
        Assert.Equal(172u, r.Metadata["llama.feed_forward_length"].AsU32());
        Assert.Equal(1e-5f, r.Metadata["llama.attention.layer_norm_rms_epsilon"].AsF32());
        Assert.Equal("llama", r.Metadata["tokenizer.ggml.model"].AsString());
        Assert.Equal(512, r.Metadata["tokenizer.ggml.tokens"].AsStrings().Count);
        Assert.Equal("<0x0A>", r.Metadata["tokenizer.ggml.tokens"].AsStrings()[13]);
        Assert.Equal(6, r.Metadata["tokenizer.ggml.token_type"].AsInts()[13]); // BYTE
        Assert.Equal(3, r.Metadata["tokenizer.ggml.token_type"].AsInts()[1]); // <s> CONTROL
        Assert.Equal(1u, r.Metadata["tokenizer.ggml.bos_token_id"].AsU32());
        Assert.Equal(2u, r.Metadata["tokenizer.ggml.eos_token_id"].AsU32());
        Assert.True(r.Metadata["tokenizer.ggml.add_bos_token"].AsBool());
        Assert.DoesNotContain(r.Tensors, t => t.Name == "output.weight"); // tied: llama.cpp reuses token_embd
        Assert.Equal(2 + 5 * 9, r.Tensors.Count);

        using var model = AutoModel.FromPretrained(Stories260KTests.ModelDir);
        var sd = model.state_dict();
        Assert.Equal(sd["model.embed_tokens.weight"].data<float>().ToArray(), r.ReadFloats("token_embd.weight"));
        Assert.Equal(sd["model.layers.3.mlp.down_proj.weight"].data<float>().ToArray(), r.ReadFloats("blk.3.ffn_down.weight"));
        Assert.Equal(new long[] { 64, 172 }, r.Tensor("blk.3.ffn_down.weight").TorchShape);
        // q rows are permuted per head from rotate-half (HF) to interleaved pairs (ggml): row 2i of a head is HF row i, 2i+1 is i + d/2.
        var q = sd["model.layers.0.self_attn.q_proj.weight"];
        var gq = tensor(r.ReadFloats("blk.0.attn_q.weight")).reshape(64, 64);
        Assert.True(gq[2].equal(q[1]).all().item<bool>() && gq[3].equal(q[5]).all().item<bool>(), "q rows not permuted as llama.cpp expects");

        var r8 = GgufReader.Open(q8);
        Assert.Equal(GgmlType.Q8_0, r8.Tensor("blk.0.attn_q.weight").Type);
        Assert.Equal(GgmlType.F16, r8.Tensor("blk.0.ffn_down.weight").Type); // 172 columns: not whole Q8_0 blocks
        Assert.Equal(GgmlType.F32, r8.Tensor("blk.0.attn_norm.weight").Type);
        var original = r.ReadFloats("blk.0.attn_q.weight");
        var quantized = r8.ReadFloats("blk.0.attn_q.weight");
        for (int b = 0; b < original.Length; b += 32)
        {
            float scale = original.Skip(b).Take(32).Max(MathF.Abs) / 127f;
            for (int j = b; j < b + 32; j++) Assert.True(MathF.Abs(original[j] - quantized[j]) <= scale * 0.6f + 1e-7f); // half a step, plus the fp16 rounding of the scale
        }
        Directory.Delete(dir, recursive: true);
    }

    [Fact]
    public void Bad_export_requests_are_one_line_errors()
    {
        var (code, _, stderr) = CliRunner.Run("export", "--format", "onnx", "--model", Stories260KTests.ModelDir, "--out", "x.gguf");
        Assert.Equal(1, code);
        Assert.Contains("--format 'onnx' is not supported", stderr);
        (code, _, stderr) = CliRunner.Run("export", "--model", TestPaths.Model("bert-tiny-cls"), "--out", Path.Combine(TestPaths.TempDir(), "x.gguf"));
        Assert.Equal(1, code);
        Assert.Contains("GGUF export supports model_type", stderr);
        (code, _, stderr) = CliRunner.Run("export", "--model", Stories260KTests.ModelDir, "--lora-only", "--out", "x.gguf");
        Assert.Equal(1, code);
        Assert.Contains("--lora-only writes one adapter", stderr);
    }
}
