using System.Threading.Channels;
using PeftSharp.Models;
using static TorchSharp.torch;

namespace PeftSharp.Inference.Serving;

/// <summary>An accepted request between <see cref="ServingEngine.Submit"/> and its completion: its resolved options, its token channel and its result.</summary>
internal sealed class PendingRequest(ServingRequest request, GenerationOptions options, JsonConstraint? json, Channel<ServedToken> channel, CancellationToken token)
{
    public readonly ServingRequest Request = request;
    public readonly GenerationOptions Options = options;
    /// <summary>The JSON-object constraint when the request asked for one.</summary>
    public readonly JsonConstraint? Json = json;
    public readonly Channel<ServedToken> Channel = channel;
    public readonly CancellationToken Token = token;
    public readonly TaskCompletionSource<ServedCompletion> Done = new(TaskCreationOptions.RunContinuationsAsynchronously);
    /// <summary>1 once the request has ended (set by <see cref="ServingCounters"/> before its result is visible).</summary>
    public int Ended;
    public string Adapter => Request.Adapter;

    /// <summary>The result of a request cancelled before it ran.</summary>
    public ServedCompletion CancelledUnrun() => new(Request.PromptIds.ToArray(), Array.Empty<int>(), null, FinishReason.Length, Cancelled: true);
}

/// <summary>A sequence in the running batch: its decoding state (shared with <see cref="TextGenerator"/>) and its place in the batch.</summary>
internal sealed class BatchRow : IDisposable
{
    public BatchRow(PendingRequest p, string adapter, bool solo, Device device)
    {
        Pending = p;
        Adapter = adapter;
        Solo = solo;
        State = new SequenceState(p.Request.PromptIds, p.Options, p.Options.EosTokenIds!, device, p.Request.TopLogprobs, p.Json);
        Logprobs = p.Request.TopLogprobs >= 0 ? new List<TokenLogprob>() : null;
    }

    public readonly PendingRequest Pending;
    public readonly string Adapter;
    /// <summary>Served in a group of its own adapter (<see cref="SoloGroup"/>), not in the mixed batch.</summary>
    public readonly bool Solo;
    public readonly SequenceState State;
    public readonly List<TokenLogprob>? Logprobs;
    /// <summary>Zero columns before this row's first cached position.</summary>
    public long Pad;
    public bool Cancelled;
    public int[] Prompt => State.Prompt;
    public IReadOnlyList<int> Tokens => State.Tokens;
    public GenerationOptions Options => Pending.Options;
    public bool Done => State.Reason is not null || Cancelled;

    public void Dispose() => State.Dispose();
}

/// <summary>
/// Requests for one adapter that cannot share the mixed batch, with prompts of one length: the group is
/// prefilled once and decoded like <see cref="TextGenerator"/> decodes one prompt (no padding, positions
/// 0..n-1, the adapter's PeftModel forward with its virtual tokens or prefix in the group's own cache).
/// Requests that arrive later form new groups; finished rows leave.
/// </summary>
internal sealed class SoloGroup(string adapter, List<BatchRow> rows) : IDisposable
{
    public readonly string Adapter = adapter;
    public readonly List<BatchRow> Rows = rows;
    public KVCache? Cache;
    public void Dispose() { Cache?.Dispose(); Cache = null; }
}

