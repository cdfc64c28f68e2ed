using System.Security.Cryptography;
using System.Text;
using System.Text.Json.Nodes;
using PeftSharp.Models;
using PeftSharp.Tokenization;
using PeftSharp.Training;
using PeftSharp.Training.Data;
using PeftSharp.Training.Quickstart;
using static TorchSharp.torch;

namespace PeftSharp.Bench.PeftBench;

/// <summary>Text ↔ ids for a base: its BOS/EOS/PAD and how an answer continues a prompt.</summary>
public sealed class BenchTokenizer
{
    readonly Func<string, int[]> _encode;
    readonly Func<IEnumerable<int>, string> _decode;
    public required int Bos { get; init; }
    public required int Eos { get; init; }
    public required int Pad { get; init; }

    BenchTokenizer(Func<string, int[]> encode, Func<IEnumerable<int>, string> decode) => (_encode, _decode) = (encode, decode);

    /// <summary>The quickstart's byte vocabulary (ids = byte + 3 after pad, bos, eos).</summary>
    public static BenchTokenizer Bytes() => new(t => new[] { QuickstartTask.Bos }.Concat(QuickstartTask.Encode(t)).ToArray(), QuickstartTask.Decode)
    { Bos = QuickstartTask.Bos, Eos = QuickstartTask.Eos, Pad = QuickstartTask.Pad };

    /// <summary>A model folder's own tokenizer (stories260K's SentencePiece vocabulary).</summary>
    public static BenchTokenizer Of(HfTokenizer tok) => new(t => tok.Encode(t).ToArray(), ids => tok.Decode(ids, skipSpecialTokens: true))
    {
        Bos = tok.BosTokenId ?? 1, Eos = tok.EosTokenId ?? 2, Pad = tok.PadTokenId ?? tok.UnkTokenId ?? 0,
    };

    /// <summary>
    /// Prompt ids (BOS first) and the answer's ids, EOS last, each encoded on its own as LLaMA-Factory's templates do
    /// (a SentencePiece answer then starts a word: "▁2", not the bare "2" that continues "c=" in one string, a piece
    /// stories260K's frozen vocabulary barely knows). The byte vocabulary encodes both ways alike.
    /// </summary>
    public (int[] Prompt, int[] Answer) Encode(string prompt, string answer) =>
        (_encode(prompt), _encode(answer).Where(i => i != Bos).Append(Eos).ToArray());

    public string Decode(IEnumerable<int> ids) => _decode(ids.Where(i => i != Eos && i != Pad)).Trim();
}

/// <summary>A base model the bench fine-tunes: a folder on disk (what `peft train` loads) and its tokenizer.</summary>
public sealed record BenchBase(string Name, string Dir, BenchTokenizer Tokenizer, long Parameters, string Origin);

/// <summary>
/// The bases: three sizes of one Llama architecture pretrained by the bench on <see cref="BenchTasks.Pretraining"/> and
/// cached by a hash of everything that determines them, plus the real stories260K model.
/// </summary>
public static class BenchBases
{
    /// <summary>Hidden size, layers, heads and pretraining steps of each procedural size.</summary>
    public sealed record Size(string Name, int Hidden, int Layers, int Heads, int PretrainSteps, int PretrainBatch, double PretrainLr);

    public static readonly IReadOnlyList<Size> Sizes = new Size[]
    {
        new("1m", 128, 4, 4, 600, 32, 3e-3),
        new("8m", 256, 9, 4, 600, 32, 2e-3),
        new("30m", 448, 12, 7, 500, 32, 1e-3),
    };

    public const string Stories = "stories260k";

    // Bumped when the pretraining recipe or corpus changes, so stale caches are not reused.
    const string Recipe = "peftbench-base-v1";

    public static IReadOnlyList<string> Names => Sizes.Select(s => s.Name).Append(Stories).ToList();

    /// <summary>A base by name; <paramref name="quick"/> pretrains a quarter as long (a separate cache entry).</summary>
    public static BenchBase Get(string name, string cacheDir, string? storiesDir, int seed, bool quick, Action<string> log)
    {
        if (name == Stories) return StoriesBase(storiesDir);
        var size = Sizes.FirstOrDefault(s => s.Name == name)
            ?? throw new ArgumentException($"--sizes: no size '{name}' (sizes: {string.Join(", ", Names)})");
        if (quick) size = size with { PretrainSteps = size.PretrainSteps / 4 };
        var dir = Path.Combine(cacheDir, $"{size.Name}-{Hash(size, seed)}");
        if (File.Exists(Path.Combine(dir, "config.json")))
        {
            log($"base {size.Name}: cached in {dir}");
            return new BenchBase(size.Name, dir, BenchTokenizer.Bytes(), ParameterCount(dir), $"pretrained by the bench (cached {dir})");
        }
        return Pretrain(size, dir, seed, log);
    }

    static string Hash(Size s, int seed)
    {
        var text = $"{Recipe}|{s}|{seed}|{QuickstartTask.VocabSize}";
        return Convert.ToHexString(SHA256.HashData(Encoding.UTF8.GetBytes(text)))[..12].ToLowerInvariant();
    }

    static long ParameterCount(string dir)
    {
        using var m = AutoModel.FromPretrained(dir);
        return m.ParameterCount();
    }

    static BenchBase Pretrain(Size s, string dir, int seed, Action<string> log)
    {
        var tok = BenchTokenizer.Bytes();
        manual_seed(seed);
        using var model = QuickstartTask.BuildModel(s.Hidden, s.Layers, s.Heads);
        log($"base {s.Name}: pretraining a {s.Layers}-layer Llama, hidden {s.Hidden} ({model.ParameterCount():N0} parameters), {s.PretrainSteps} steps on the copy corpus");
        var rows = BenchTasks.Pretraining(s.PretrainSteps * s.PretrainBatch / 2, seed).Select(t =>
        {
            var ids = tok.Encode(t, "").Prompt.Append(tok.Eos).ToArray();
            return new TrainExample { InputIds = ids, Labels = ids };
        }).ToList();
        var tmp = dir + ".tmp-" + Environment.ProcessId;
        var args = new TrainingArguments
        {
            OutputDir = tmp, LearningRate = s.PretrainLr, MaxSteps = s.PretrainSteps, PerDeviceTrainBatchSize = s.PretrainBatch,
            WarmupRatio = 0.05, LrSchedulerType = "cosine", LoggingSteps = 100, WeightDecay = 0.01, Seed = seed,
        };
        var sw = System.Diagnostics.Stopwatch.StartNew();
        using (var trainer = new Trainer(TrainingTarget.Full(model), args, rows))
        {
            trainer.Logged += e => { if (e["loss"] is { } l) log($"  step {e["step"]}/{s.PretrainSteps} loss {l.GetValue<double>():F4}"); };
            trainer.Train();
        }
        QuickstartTask.WriteTokenizer(tmp);
        File.WriteAllText(Path.Combine(tmp, "peftbench_base.json"), new JsonObject
        {
            ["size"] = s.Name, ["hidden"] = s.Hidden, ["layers"] = s.Layers, ["pretrain_steps"] = s.PretrainSteps, ["seed"] = seed,
            ["seconds"] = Math.Round(sw.Elapsed.TotalSeconds, 1), ["recipe"] = Recipe,
        }.ToJsonString());
        if (Directory.Exists(dir)) Directory.Delete(dir, true);
        Directory.Move(tmp, dir);
        log($"base {s.Name}: pretrained in {sw.Elapsed.TotalSeconds:F0} s, cached in {dir}");
        return new BenchBase(s.Name, dir, tok, model.ParameterCount(), $"pretrained by the bench ({s.PretrainSteps} steps, {sw.Elapsed.TotalSeconds:F0} s)");
    }

    /// <summary>stories260K (Karpathy's llama2.c TinyStories model, converted to HF): --stories DIR, else the repo's copies.</summary>
    static BenchBase StoriesBase(string? dir)
    {
        var candidates = dir is not null ? new[] { dir } : new[]
        {
            "tests/PeftSharp.Tests/TestData/real/stories260K", "tests/PeftSharp.Tests/TestData/models/stories260K",
            "../shared/fixtures/real/stories260K",
        };
        var found = candidates.FirstOrDefault(d => File.Exists(Path.Combine(d, "config.json")))
            ?? throw new ArgumentException($"stories260k: no model folder at {string.Join(", ", candidates)} (pass --stories DIR)");
        var tok = HfTokenizer.FromFolder(found);
        return new BenchBase(Stories, found, BenchTokenizer.Of(tok), ParameterCount(found), "real: llama2.c stories260K (TinyStories), HF layout");
    }
}
