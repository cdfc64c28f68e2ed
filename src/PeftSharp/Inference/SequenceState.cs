using TorchSharp;
using static TorchSharp.torch;

namespace PeftSharp.Inference;

/// <summary>A generated token's log-probability under the model (raw logits, before sampling settings) and the most likely alternatives.</summary>
public readonly record struct TokenLogprob(int TokenId, float Logprob, IReadOnlyList<(int TokenId, float Logprob)> Top);

/// <summary>
/// One sequence being decoded, the same for <see cref="TextGenerator"/>'s rows and the serving engine's: its
/// tokens, why it stopped (eos id, stop string, max_new_tokens, a completed JSON object), its streamed text, and,
/// when it picks its own tokens, its processors, JSON constraint, seeded generator and logprobs.
/// </summary>
internal sealed class SequenceState : IDisposable
{
    readonly List<int> _tokens;
    readonly HashSet<int> _eos;
    readonly StopStringMatcher _stops;
    readonly IncrementalDetokenizer? _detokenizer;
    readonly JsonConstraint? _json;
    JsonPrefix _jsonState = JsonPrefix.Start;
    readonly int _topLogprobs;

    /// <param name="eos">The resolved eos ids (options' or the model's).</param>
    /// <param name="rngDevice">Gives the sequence a generator of its own seeded with the options' seed; null: the caller draws.</param>
    /// <param name="topLogprobs">-1: no logprobs; else the chosen token's and this many alternatives'.</param>
    /// <param name="json">Restricts tokens to those that keep the text a JSON object's prefix.</param>
    public SequenceState(IReadOnlyList<int> prompt, GenerationOptions options, IReadOnlyList<int> eos, Device? rngDevice = null, int topLogprobs = -1, JsonConstraint? json = null)
    {
        Options = options;
        Prompt = prompt.ToArray();
        _tokens = Prompt.ToList();
        _eos = eos.ToHashSet();
        _stops = new StopStringMatcher(options.StopStrings, options.Decode);
        _detokenizer = options.Decode is { } d ? new IncrementalDetokenizer(d) : null;
        Rng = rngDevice is not null && options.Seed is ulong seed ? new torch.Generator(seed, rngDevice) : null;
        _topLogprobs = topLogprobs;
        _json = json;
    }

    public GenerationOptions Options { get; }
    public int[] Prompt { get; }
    public List<int> NewTokens { get; } = new();
    /// <summary>Prompt and generated tokens, without padding: what stop strings and the repetition penalty see.</summary>
    public IReadOnlyList<int> Tokens => _tokens;
    public FinishReason? Reason { get; private set; }
    public torch.Generator? Rng { get; private set; }
    /// <summary>The newest token's logprob entry (when logprobs were asked for).</summary>
    public TokenLogprob? LastLogprob { get; private set; }

    /// <summary>Needs more than one argmax over a batch's raw logits.</summary>
    public bool PicksOwnTokens => Options.DoSample || Options.RepetitionPenalty != 1.0 || _json is not null || _topLogprobs >= 0;

    /// <summary>
    /// This sequence's next token from its [1, vocab] float logits: repetition penalty and sampling warpers as
    /// <see cref="LogitsProcessors"/> apply them, the JSON constraint's mask, then a draw (its own generator) or
    /// the argmax. Records the logprobs when asked for.
    /// </summary>
    public int Choose(Tensor logits)
    {
        using var scope = NewDisposeScope();
        var sequences = Options.RepetitionPenalty != 1.0 ? tensor(_tokens.Select(t => (long)t).ToArray(), new long[] { 1, _tokens.Count }) : null;
        var scores = LogitsProcessors.Process(logits, sequences, Options);
        if (_json is not null) scores = scores.masked_fill(_json.Disallowed(_jsonState, _eos, scores.device, scores.shape[^1]), double.NegativeInfinity);
        int token = (int)LogitsProcessors.Choose(scores, Options, Rng).item<long>();
        if (_topLogprobs >= 0) LastLogprob = Logprob(logits, token);
        return token;
    }

    TokenLogprob Logprob(Tensor logits, int token)
    {
        var logp = logits.log_softmax(-1).squeeze(0);
        float chosen = logp[token].item<float>();
        var top = new List<(int, float)>();
        if (_topLogprobs > 0)
        {
            var (values, ids) = logp.topk(Math.Min(_topLogprobs, (int)logp.shape[0]));
            var v = values.data<float>().ToArray();
            var i = ids.data<long>().ToArray();
            for (int k = 0; k < v.Length; k++) top.Add(((int)i[k], v[k]));
        }
        return new TokenLogprob(token, chosen, top);
    }

    /// <summary>Appends a token and decides whether the sequence ends with it; returns the text it adds (null without a decoder).</summary>
    /// <param name="lastStep">This is the step max_new_tokens allows last.</param>
    public string? Accept(int token, bool lastStep)
    {
        _tokens.Add(token);
        NewTokens.Add(token);
        if (_json is not null && !_eos.Contains(token)) _jsonState = _json.Advance(_jsonState, token);
        if (_eos.Contains(token)) Reason = FinishReason.Eos;
        else if (_json is not null && _jsonState.Complete) Reason = FinishReason.Complete;
        else if (_stops.Active && _stops.Matches(_tokens)) Reason = FinishReason.StopString;
        else if (lastStep || NewTokens.Count >= Options.MaxNewTokens) Reason = FinishReason.Length;
        return _detokenizer?.Delta(NewTokens, Reason is not null);
    }

    public void Dispose() { Rng?.Dispose(); Rng = null; }
}
