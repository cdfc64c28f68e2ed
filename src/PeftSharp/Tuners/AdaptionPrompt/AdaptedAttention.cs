using PeftSharp.Models;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;
using static TorchSharp.torch.nn;

namespace PeftSharp.Tuners.AdaptionPrompt;

/// <summary>
/// peft's <c>AdaptedAttention</c> for the Llama family: the original attention (<c>model</c>) plus, per adapter, a
/// prompt <c>adaption_prompt</c> [1, adapter_len, hidden] (N(0,1)) and a gate <c>adaption_gate</c> [1] (zero, so a new
/// adapter changes nothing). Output = attention(x) + o_proj(gate · softmax(Q·K_pᵀ/√d) · V_p), where K_p/V_p are the
/// prompt through k_proj/v_proj (no RoPE, no mask) and Q the layer's RoPE'd queries; the prompt softmax is separate.
/// </summary>
public sealed class AdaptedAttention : nn.Module, ILlamaAttention, IAdapterLayer
{
    readonly LlamaAttention model;
    readonly AdapterParameters adaption_prompt = new(), adaption_gate = new();
    readonly List<string> _adapters = new(), _active = new();

    public AdaptedAttention(LlamaAttention attention) : base(nameof(AdaptedAttention))
    {
        model = attention;
        RegisterComponents();
    }

    public int? SlidingWindow => model.SlidingWindow;
    public nn.Module BaseLayer => model;
    public nn.Module Unwrapped => model;
    public IReadOnlyList<string> Adapters => _adapters;
    public IReadOnlyList<string> ActiveAdapters => _active;
    public bool AdaptersDisabled { get; set; }
    public RowAdapters? RowAdapters => ForwardContext.Current?.Rows;
    public IReadOnlyList<string> MergedAdapters => Array.Empty<string>();

    /// <summary>Adds a prompt of the q_proj dtype (float32 when q_proj is quantized), as peft does.</summary>
    public void AddAdapter(string adapter, int adapterLen, long hidden, bool trainable)
    {
        var w = model.QProj.parameters().First();
        var dtype = is_floating_point(w) ? w.dtype : ScalarType.Float32;
        adaption_prompt.Add(adapter, new Parameter(randn(new long[] { 1, adapterLen, hidden }, dtype, w.device), trainable));
        adaption_gate.Add(adapter, new Parameter(zeros(new long[] { 1 }, dtype, w.device), trainable));
        _adapters.Add(adapter);
    }

    public void SetActiveAdapters(IReadOnlyList<string> names)
    {
        var mine = names.Where(adaption_prompt.Contains).ToList();
        if (mine.Count > 1) throw new PeftSharpException($"adaption prompts allow one active adapter; got {string.Join(", ", mine)}");
        _active.Clear();
        _active.AddRange(mine);
    }

    public void Merge(IEnumerable<string> names) =>
        throw new PeftSharpException("an adaption prompt (LLaMA-Adapter) adds an attention branch and cannot be merged into the weights (peft neither)");

    public void Unmerge() { }

    public void DeleteAdapter(string name)
    {
        adaption_prompt.Remove(name);
        adaption_gate.Remove(name);
        _adapters.Remove(name);
        _active.Remove(name);
    }

    public void SetTrainable(string name, bool trainable)
    {
        if (!adaption_prompt.Contains(name)) return;
        adaption_prompt[name].requires_grad = trainable;
        adaption_gate[name].requires_grad = trainable;
    }

    public IEnumerable<(string Key, Tensor Value)> AdapterState(string adapter)
    {
        if (!adaption_prompt.Contains(adapter)) yield break;
        yield return ("adaption_prompt", adaption_prompt[adapter]);
        yield return ("adaption_gate", adaption_gate[adapter]);
    }

    public bool LoadAdapterState(string adapter, string key, Tensor value)
    {
        if (!adaption_prompt.Contains(adapter)) return false;
        var target = key switch { "adaption_prompt" => adaption_prompt[adapter], "adaption_gate" => adaption_gate[adapter], _ => null };
        if (target is null) return false;
        if (!target.shape.SequenceEqual(value.shape))
            throw new PeftFormatException(null, $"{key} has shape [{string.Join(", ", value.shape)}], the adapter config needs [{string.Join(", ", target.shape)}]");
        using var _ = no_grad();
        target.copy_(value);
        return true;
    }

    public Tensor forward(Tensor x, Tensor cos, Tensor sin, Tensor mask, KVCache? cache)
    {
        var output = model.forward(x, cos, sin, mask, cache);
        if (RowAdapters is { } rows)
        {
            if (rows.Distinct.Any(adaption_prompt.Contains)) throw new PeftSharpException("adaption prompts (LLaMA-Adapter) cannot serve mixed-adapter batches; run one adapter per batch");
            return output;
        }
        if (AdaptersDisabled || _active.Count == 0) return output;
        using var scope = NewDisposeScope();
        var adapter = _active[0];
        var dtype = x.dtype;
        long b = x.shape[0], t = x.shape[1];
        int heads = model.Heads, kvHeads = model.KvHeads, d = model.HeadDim;
        var prompt = adaption_prompt[adapter].to(dtype);
        long len = prompt.shape[1];
        Tensor PromptHeads(Module<Tensor, Tensor> proj)
        {
            var p = proj.call(prompt).view(1, len, kvHeads, d).expand(b, -1, -1, -1).transpose(1, 2);
            return heads == kvHeads ? p : p.repeat_interleave(heads / kvHeads, 1);
        }
        var keys = PromptHeads(model.KProj);
        var values = PromptHeads(model.VProj);
        var q = Rope.Apply(model.QProj.call(x).view(b, t, heads, d).transpose(1, 2), cos, sin);
        var scores = matmul(q, keys.transpose(2, 3)) / Math.Sqrt(d);
        // In the query's dtype, as peft: the projections may run in bfloat16 (the trainer's bf16 mode) under a float32 input.
        scores = adaption_gate[adapter].to(q.dtype) * scores.softmax(-1, ScalarType.Float32).to(q.dtype);
        var branch = matmul(scores, values).transpose(1, 2).reshape(b, t, heads * d);
        return (output + model.OProj.call(branch)).to(dtype).MoveToOuterDisposeScope();
    }
}
