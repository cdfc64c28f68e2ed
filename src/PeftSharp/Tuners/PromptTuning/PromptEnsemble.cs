using PeftSharp.Models;
using PeftSharp.Tuners.PromptLearning;
using TorchSharp;
using static TorchSharp.torch;

namespace PeftSharp.Tuners.PromptTuning;

/// <summary>
/// Prompt ensembling (Lester et al. 2021, §7): several Prompt Tuning / P-Tuning adapters of one task, held by one
/// PeftModel, run as a single batch (each input repeated once per prompt) for training and inference; predictions
/// are combined by averaging the members' probabilities or by majority vote. Each member stays an ordinary peft
/// adapter (saved and loaded on its own); peft itself has no ensembling, so nothing is written to adapter_config.json.
/// </summary>
public sealed class PromptEnsemble
{
    readonly PeftModel _peft;
    readonly List<VirtualTokenLearner> _members;

    public PromptEnsemble(PeftModel peft, IReadOnlyList<string> adapters)
    {
        if (adapters.Count < 2) throw new PeftSharpException($"a prompt ensemble needs at least two adapters; got {adapters.Count}");
        _peft = peft;
        _members = adapters.Select(a => peft.PromptLearnerOf(a) as VirtualTokenLearner
            ?? throw new PeftSharpException($"adapter '{a}' is not a Prompt Tuning / P-Tuning adapter of this model; ensembles combine virtual-token prompts")).ToList();
        Adapters = adapters.ToList();
        if (_members.Select(m => m.Config.NumVirtualTokens).Distinct().Count() > 1)
            throw new PeftSharpException($"ensemble members must have the same num_virtual_tokens; got {string.Join(", ", _members.Select(m => m.Config.NumVirtualTokens))}");
    }

    public IReadOnlyList<string> Adapters { get; }

    /// <summary>One forward over members × batch rows: logits [members, batch, ...] (LM logits include the virtual positions).</summary>
    public Tensor MemberLogits(ModelInputs inputs)
    {
        using var scope = NewDisposeScope();
        var model = _peft.Model;
        int n = _members.Count, nvt = _members[0].Config.NumVirtualTokens;
        var embeds = inputs.InputsEmbeds ?? model.InputEmbeddings.call(inputs.InputIds!);
        long b = embeds.shape[0];
        var rows = _members.Select(m => cat(new[] { m.VirtualTokens().to(embeds.dtype, embeds.device).unsqueeze(0).expand(b, -1, -1), embeds }, 1)).ToArray();
        Tensor? Repeat(Tensor? t, long fill) => t is null ? null
            : cat(new[] { full(t.shape[0], nvt, fill, t.dtype, t.device), t }, 1).repeat(n, 1);
        // Each member's rows use its own modules_to_save copies (e.g. a classification head) through the mixed-batch seam.
        using var perRow = new RowAdapters(Adapters.SelectMany(a => Enumerable.Repeat(a, (int)b)).ToList(), embeds.device);
        using var ctx = ForwardContext.Enter(perRow);
        var logits = model.Forward(new ModelInputs
        {
            InputsEmbeds = cat(rows, 0),
            AttentionMask = Repeat(inputs.AttentionMask, 1),
            TokenTypeIds = Repeat(inputs.TokenTypeIds, 0),
        }).Logits;
        return logits.view(new[] { (long)n, b }.Concat(logits.shape.Skip(1)).ToArray()).MoveToOuterDisposeScope();
    }

    /// <summary>Mean of the members' probabilities (softmax over the last axis): [batch, ...].</summary>
    public Tensor Probabilities(ModelInputs inputs)
    {
        using var scope = NewDisposeScope();
        return MemberLogits(inputs).to(ScalarType.Float32).softmax(-1).mean(new long[] { 0 }).MoveToOuterDisposeScope();
    }

    /// <summary>Majority vote of the members' argmax (ties go to the smallest class id): [batch, ...].</summary>
    public Tensor Vote(ModelInputs inputs)
    {
        using var scope = NewDisposeScope();
        var logits = MemberLogits(inputs);
        var votes = nn.functional.one_hot(logits.argmax(-1), logits.shape[^1]).sum(dim: 0);
        return votes.argmax(-1).MoveToOuterDisposeScope();
    }
}
