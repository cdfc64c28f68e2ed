using System.Diagnostics;
using System.Text;
using PeftSharp.Tokenization;

namespace PeftSharp.Bench.Benchmarks;

/// <summary>
/// Encode throughput of <see cref="HfTokenizer"/> on a generated ~1 MB mixed text (prose, code, numbers,
/// accents, CJK, emoji) for each fixture tokenizer. <c>--dir</c>: folder of tokenizer folders (default: the
/// test data); llama3 is added from ../shared/fixtures when that exists. <c>--mb</c>, <c>--runs</c>.
/// </summary>
public sealed class TokenizeBench : IBenchmark
{
    public string Name => "tokenize";
    public string Description => "HfTokenizer encode tokens/s on ~1 MB of mixed text (gpt2, qwen3, mistral, bert, llama3 if ../shared)";

    static readonly string[] Names = ["gpt2", "qwen3", "mistral", "bert-base-uncased"];

    public BenchResult Run(BenchOptions options)
    {
        var dir = options.Args.GetValueOrDefault("dir") ?? FindUp(Path.Combine("tests", "PeftSharp.Tests", "TestData", "tokenizers"))
            ?? throw new PeftSharpException("tokenize bench: tests/PeftSharp.Tests/TestData/tokenizers not found above the bench; pass --dir PATH");
        var folders = Names.Select(n => (n, Path.Combine(dir, n))).Where(p => Directory.Exists(p.Item2)).ToList();
        if (FindUp(Path.Combine("shared", "fixtures", "tokenizers", "llama3")) is { } llama3) folders.Add(("llama3", llama3));
        var text = MakeText((int)(double.Parse(options.Get("mb", "1"), System.Globalization.CultureInfo.InvariantCulture) * 1_000_000));
        int runs = options.GetInt("runs", 3);

        var result = new BenchResult { Columns = ["tokenizer", "load_s", "tokens", "cold_s", "warm_s", "tok_per_s", "MB_per_s", "decode_s"] };
        foreach (var (name, path) in folders)
        {
            var sw = Stopwatch.StartNew();
            var tok = HfTokenizer.FromFolder(path);
            double load = sw.Elapsed.TotalSeconds;
            tok.Decode(tok.Encode("JIT warm-up, not timed. 123 é 日本 🙂")); // so the first tokenizer does not pay for JIT
            sw.Restart();
            var ids = tok.Encode(text, addSpecialTokens: false);
            double cold = sw.Elapsed.TotalSeconds, warm = double.MaxValue;
            for (int r = 0; r < runs; r++)
            {
                sw.Restart();
                tok.Encode(text, addSpecialTokens: false);
                warm = Math.Min(warm, sw.Elapsed.TotalSeconds);
            }
            sw.Restart();
            tok.Decode(ids);
            double decode = sw.Elapsed.TotalSeconds;
            result.Add(name, load, ids.Count, cold, warm, ids.Count / warm, Encoding.UTF8.GetByteCount(text) / 1e6 / warm, decode);
        }
        result.Notes.Add($"text: {Encoding.UTF8.GetByteCount(text) / 1e6:F2} MB UTF-8 ({text.Length} chars), one thread; cold = first encode (empty caches), warm = best of {runs}");
        result.Notes.Add($"tokenizers from {dir}");
        return result;
    }

    static string? FindUp(string relative)
    {
        for (var d = new DirectoryInfo(AppContext.BaseDirectory); d is not null; d = d.Parent)
        {
            var candidate = Path.Combine(d.FullName, relative);
            if (Directory.Exists(candidate)) return candidate;
        }
        return null;
    }

    // Deterministic mix: sentences of common and rare words, numbers, code lines, accented/CJK/emoji snippets.
    static string MakeText(int bytes)
    {
        string[] words = ["the", "model", "learns", "adapter", "weights", "quickly", "while", "base", "parameters", "stay", "frozen",
            "tokenization", "Straße", "naïve", "café", "résumé", "Zürich", "données", "über", "Hugging", "Face", "PEFT", "LoRA",
            "DON'T", "we'll", "it's", "they're", "low-rank", "fine-tuning", "gradient", "checkpoint", "überraschend", "Ελληνικά"];
        string[] snippets = ["def forward(self, x):\n    return self.lora_B(self.lora_A(x)) * self.scaling\n",
            "for (int i = 0; i < n; i++) { sum += a[i] * b[i]; }\n", "{\"lr\": 0.0002, \"r\": 16, \"alpha\": 32}\n",
            "深度学习模型的参数高效微调。", "日本語のテキストも含まれます。", "한국어 문장입니다. ", "🙂🚀 emoji test 👍🏽 ", "  indented\tand\ttabbed  \n"];
        var rng = new Random(1234);
        var sb = new StringBuilder(bytes + 256);
        while (Encoding.UTF8.GetMaxByteCount(sb.Length) / 3 < bytes)
        {
            int n = rng.Next(6, 20);
            for (int i = 0; i < n; i++)
            {
                if (i > 0) sb.Append(' ');
                var w = words[rng.Next(words.Length)];
                sb.Append(i == 0 ? char.ToUpperInvariant(w[0]) + w[1..] : w);
                if (rng.Next(12) == 0) sb.Append(' ').Append(rng.Next(100000));
            }
            sb.Append(rng.Next(4) switch { 0 => "? ", 1 => "! ", _ => ". " });
            if (rng.Next(5) == 0) sb.Append('\n').Append(snippets[rng.Next(snippets.Length)]);
        }
        return sb.ToString();
    }
}
