using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;
using static TorchSharp.torch.nn;

namespace PeftSharp.Tuners.Lora;

/// <summary>
/// peft's lora.Embedding: y = base(ids) + scaling·(Aᵀ[ids]·Bᵀ) with A [r, num_embeddings] and B [dim, r] stored as
/// plain parameters (lora_embedding_A/B). No dropout (as peft). Default init swaps roles: A zeros, B N(0,1).
/// </summary>
public sealed class LoraEmbedding : LoraLayer
{
    readonly AdapterParameters lora_embedding_A = new();
    readonly AdapterParameters lora_embedding_B = new();

    public long NumEmbeddings { get; }
    public long EmbeddingDim { get; }

    public LoraEmbedding(Embedding baseLayer) : base(nameof(LoraEmbedding), baseLayer)
    {
        NumEmbeddings = baseLayer.weight!.shape[0];
        EmbeddingDim = baseLayer.weight.shape[1];
        register_module("lora_embedding_A", lora_embedding_A);
        register_module("lora_embedding_B", lora_embedding_B);
        register_module("lora_magnitude_vector", lora_magnitude_vector);
        RegisterComponents();
    }

    public override Parameter BaseWeight => ((Embedding)base_layer).weight!;

    public Tensor A(string adapter) => lora_embedding_A[adapter];
    public Tensor B(string adapter) => lora_embedding_B[adapter];

    /// <summary>The table as [dim, num_embeddings] (a view): the [out, in] layout of A [r, num] and B [dim, r].</summary>
    public override Tensor WeightOI => BaseWeight.t();

    public override Tensor ToBaseLayout(Tensor weightOI) => weightOI.t();

    protected override void CreateTensors(string adapter, LoraAdapterSettings s)
    {
        var device = BaseWeight.device;
        var a = empty(s.R, NumEmbeddings, dtype: ScalarType.Float32, device: device);
        var b = empty(EmbeddingDim, s.R, dtype: ScalarType.Float32, device: device);
        switch (s.Init)
        {
            case "true" or "gaussian": a.zero_(); b.normal_(0, 1); break;
            case "false": a.normal_(0, 1); b.normal_(0, 1); break;
            default: throw new PeftConfigException($"init_lora_weights '{s.Init}' is not supported (supported: true, false, gaussian)");
        }
        RoundThroughBaseDType(a);
        RoundThroughBaseDType(b);
        lora_embedding_A.Add(adapter, new Parameter(a));
        lora_embedding_B.Add(adapter, new Parameter(b));
    }

    protected override void RemoveTensors(string adapter)
    {
        lora_embedding_A.Remove(adapter);
        lora_embedding_B.Remove(adapter);
    }

    protected override (Parameter A, Parameter B)? Factors(string adapter) =>
        lora_embedding_A.Contains(adapter) ? (lora_embedding_A[adapter], lora_embedding_B[adapter]) : null;

    /// <summary>Aᵀ[ids]·Bᵀ: the low-rank embedding of the ids, [..., dim].</summary>
    Tensor LoraEmbed(string adapter, Tensor ids)
    {
        var table = A(adapter).t();
        var rows = table.index_select(0, ids.reshape(-1)).reshape(ids.shape.Append(table.shape[1]).ToArray());
        return rows.matmul(B(adapter).t());
    }

    public override Tensor forward(Tensor ids)
    {
        if (UseBaseOnly) return base_layer.call(ids);
        using var scope = NewDisposeScope();
        var result = base_layer.call(ids);
        var resultType = result.dtype;
        if (RowAdapters is { } rows)
        {
            CheckMixedBatch();
            foreach (var name in rows.Distinct.Where(Settings.ContainsKey))
            {
                var idx = rows.Rows(name);
                var term = Settings[name].Variant.Delta(this, name, ids.index_select(0, idx), result.index_select(0, idx));
                result = result.index_add(0, idx, term.to(resultType), 1);
            }
            return result.MoveToOuterDisposeScope();
        }
        foreach (var name in ActiveAdapters) result = result + Settings[name].Variant.Delta(this, name, ids, result);
        return result.to(resultType).MoveToOuterDisposeScope();
    }

    public override Tensor LowRankDelta(string adapter, Tensor ids) => LoraEmbed(adapter, ids) * ScalingOf(adapter);

    public override Tensor LowRankOutput(string adapter, Tensor ids) => LoraEmbed(adapter, ids);

    /// <summary>No dropout and no bias: the ids and the running output as they are.</summary>
    public override (Tensor Input, Tensor BaseResult) DoraInputs(string adapter, Tensor ids, Tensor result, Tensor weightOI) => (ids, result);

    protected override (string A, string B) StateKeys => ("lora_embedding_A", "lora_embedding_B");
    public override Tensor AOf(string adapter) => A(adapter);
    public override Tensor BOf(string adapter) => B(adapter);
}
