using PeftSharp.Models;
using PeftSharp.Runtime;
using TorchSharp;
using static TorchSharp.torch;

namespace PeftSharp.Inference;

/// <summary>
/// Greedy and sampled decoding for any causal LM, following transformers' generate(): the prompt runs
/// once into a KV cache, then each step feeds only the new token. Batches are left-padded; the attention
/// mask grows by one column per step and position ids are cumsum(mask) - 1. Rows that finish (eos id or
/// stop string) are filled with the pad id until every row has finished or max_new_tokens is reached.
/// </summary>
public sealed partial class TextGenerator
{
    readonly ILanguageModel _model;

    /// <summary>Generates with a plain model or a PeftModel (whose adapters, prompts and prefixes apply at every step).</summary>
    public TextGenerator(ILanguageModel model)
    {
        if (!model.IsCausalLM)
            throw new PeftSharpException($"{model.GetType().Name} is not a causal language model; generation needs one (e.g. LlamaForCausalLM, GPT2LMHeadModel)");
        _model = model;
    }

    /// <summary>Generates for prompts of any lengths; shorter ones are left-padded with the pad id.</summary>
    public GenerationResult Generate(IReadOnlyList<IReadOnlyList<int>> prompts, GenerationOptions? options = null, Action<GeneratedToken>? onToken = null)
    {
        options ??= new GenerationOptions();
        if (prompts.Count == 0) throw new PeftSharpException("generate needs at least one prompt");
        for (int r = 0; r < prompts.Count; r++)
            if (prompts[r].Count == 0) throw new PeftSharpException($"prompt row {r} is empty");
        int pad = ResolvePad(options, ResolveEos(options));
        int width = prompts.Max(p => p.Count);
        var ids = prompts.Select(p => Enumerable.Repeat(pad, width - p.Count).Concat(p).ToArray()).ToArray();
        var mask = prompts.Select(p => Enumerable.Repeat(0, width - p.Count).Concat(Enumerable.Repeat(1, p.Count)).ToArray()).ToArray();
        return Run(ids, mask, options, onToken);
    }

    /// <summary>transformers' form: [batch, len] input ids and an optional left-padding mask (1 = token).</summary>
    public GenerationResult Generate(Tensor inputIds, Tensor? attentionMask = null, GenerationOptions? options = null, Action<GeneratedToken>? onToken = null)
    {
        if (inputIds.dim() != 2) throw new PeftSharpException($"input ids must be [batch, seq]; got [{string.Join(", ", inputIds.shape)}]");
        if (attentionMask is not null && !attentionMask.shape.SequenceEqual(inputIds.shape))
            throw new PeftSharpException($"attention mask shape [{string.Join(", ", attentionMask.shape)}] differs from input ids [{string.Join(", ", inputIds.shape)}]");
        var ids = ToRows(inputIds);
        var mask = attentionMask is null ? ids.Select(r => Enumerable.Repeat(1, r.Length).ToArray()).ToArray() : ToRows(attentionMask);
        return Run(ids, mask, options ?? new GenerationOptions(), onToken);
    }

    IReadOnlyList<int> ResolveEos(GenerationOptions o) => o.EosTokenIds ?? _model.Config.EosTokenIds;

    int ResolvePad(GenerationOptions o, IReadOnlyList<int> eos) => o.PadTokenId ?? _model.Config.PadTokenId ?? (eos.Count > 0 ? eos[0] : 0);

    static int[][] ToRows(Tensor t)
    {
        var flat = t.to(ScalarType.Int64).cpu().data<long>().ToArray();
        int b = (int)t.shape[0], n = (int)t.shape[1];
        return Enumerable.Range(0, b).Select(r => flat.Skip(r * n).Take(n).Select(v => (int)v).ToArray()).ToArray();
    }

    GenerationResult Run(int[][] promptIds, int[][] promptMask, GenerationOptions options, Action<GeneratedToken>? onToken)
    {
        options.Validate();
        var eosIds = ResolveEos(options);
        int pad = ResolvePad(options, eosIds);
        int batch = promptIds.Length, promptLen = promptIds[0].Length;
        var rows = Enumerable.Range(0, batch).Select(r => new Row(promptIds[r], promptMask[r], options, eosIds)).ToArray();
        ValidatePrompt(rows, promptLen);

        var device = _model.Device;
        // torch's own generator, so a seed gives the same draws on every run (and on the model's device).
        using var rng = options.Seed is ulong seed ? new torch.Generator(seed, device) : null;
        // Without cache support every step reruns the whole sequence (the same logits a full forward gives).
        using var cache = _model.SupportsKVCache ? _model.NewCache() : null;
        using var noGrad = no_grad();
        var mask = promptMask.Select(m => m.ToList()).ToArray();
        int step = 0;
        var collector = new PeriodicCollector();
        for (; step < options.MaxNewTokens && rows.Any(r => r.State.Reason is null); step++)
        {
            using var scope = NewDisposeScope();
            int seqLen = promptLen + step;
            var maskT = Matrix(mask, seqLen, device);
            var positions = AttentionMasks.PositionIdsFromMask(maskT);
            bool incremental = step > 0 && cache is not null;
            var input = incremental
                ? Matrix(rows.Select(r => r.Sequence.Skip(seqLen - 1).ToList()).ToArray(), 1, device)
                : Matrix(rows.Select(r => r.Sequence).ToArray(), seqLen, device);
            if (incremental) positions = positions.narrow(1, seqLen - 1, 1);
            var output = _model.Forward(new ModelInputs { InputIds = input, AttentionMask = maskT, PositionIds = positions, Cache = cache });
            var logits = output.Logits.select(1, -1).to(ScalarType.Float32);
            var sequences = options.RepetitionPenalty != 1.0 ? Matrix(rows.Select(r => r.Sequence).ToArray(), seqLen, device) : null;
            var scores = LogitsProcessors.Process(logits, sequences, options);
            var next = LogitsProcessors.Choose(scores, options, rng);
            var nextIds = next.cpu().data<long>().ToArray();
            bool lastStep = step == options.MaxNewTokens - 1;
            for (int r = 0; r < batch; r++)
            {
                var row = rows[r];
                mask[r].Add(1);
                if (row.State.Reason is not null) { row.Sequence.Add(pad); continue; }
                int token = (int)nextIds[r];
                row.Sequence.Add(token);
                var delta = row.State.Accept(token, lastStep);
                onToken?.Invoke(new GeneratedToken(r, token, step, delta));
            }
            if (step % 256 == 255) TorchRuntime.CollectAndTrim();
            else collector.Tick();
        }
        return new GenerationResult
        {
            Sequences = rows.Select(r => r.Sequence.ToArray()).ToArray(),
            PromptIds = rows.Select(r => r.State.Prompt).ToArray(),
            NewTokens = rows.Select(r => r.State.NewTokens.ToArray()).ToArray(),
            FinishReasons = rows.Select(r => r.State.Reason ?? FinishReason.Length).ToArray(),
            Texts = options.Decode is { } decode ? rows.Select(r => decode(r.State.NewTokens)).ToArray() : null,
        };
    }

    void ValidatePrompt(Row[] rows, int promptLen)
    {
        int vocab = _model.Config.VocabSize;
        for (int r = 0; r < rows.Length; r++)
        {
            var row = rows[r];
            if (row.Sequence.Count != promptLen || row.Mask.Length != promptLen)
                throw new PeftSharpException($"prompt row {r} has {row.Sequence.Count} ids and {row.Mask.Length} mask entries; every row needs {promptLen}");
            if (row.Mask.Any(m => m is not (0 or 1))) throw new PeftSharpException($"attention mask row {r} must hold only 0 and 1");
            int first = Array.IndexOf(row.Mask, 1);
            if (first < 0) throw new PeftSharpException($"prompt row {r} is all padding (attention mask has no 1)");
            if (row.Mask.Skip(first).Any(m => m == 0))
                throw new PeftSharpException($"prompt row {r} is not left-padded: generation needs padding only before the first token");
            foreach (var bad in row.State.Prompt.Where(id => id < 0 || id >= vocab).Take(1))
                throw new PeftSharpException($"prompt row {r}: token id {bad} is outside the vocabulary [0, {vocab})");
        }
    }

    static Tensor Matrix(IReadOnlyList<IReadOnlyList<int>> rows, int width, Device device)
    {
        var flat = new long[rows.Count * width];
        for (int r = 0; r < rows.Count; r++)
            for (int c = 0; c < width; c++) flat[r * width + c] = rows[r][c];
        return tensor(flat, new long[] { rows.Count, width }, ScalarType.Int64).to(device);
    }

    /// <summary>One batch row: its padded sequence and mask here, its decoding state (eos, stop strings, streamed text) shared with the serving engine.</summary>
    sealed class Row
    {
        public Row(int[] ids, int[] mask, GenerationOptions options, IReadOnlyList<int> eos)
        {
            Sequence = ids.ToList();
            Mask = mask;
            // Sampling stays batch-wide (one generator for the batch, as transformers draws), so the state gets no generator.
            State = new SequenceState(ids.Where((_, i) => mask[i] == 1).ToArray(), options, eos);
        }

        public readonly List<int> Sequence;
        public readonly int[] Mask;
        public readonly SequenceState State;
    }
}
