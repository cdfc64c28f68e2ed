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
    readonly AdapterModules<WeightHolder> lora_magnitude_vector = new();

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
    Tensor? Magnitude(string adapter) => lora_magnitude_vector.Contains(adapter) ? lora_magnitude_vector[adapter].weight : null;

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
        if (s.UseDora)
        {
            using var scope = NewDisposeScope();
            var w = BaseWeight.to(ScalarType.Float32).t() + s.Scaling * b.matmul(a);
            lora_magnitude_vector.Add(adapter, new WeightHolder(linalg.norm(w, dims: new long[] { 1 }).MoveToOuterDisposeScope()));
        }
    }

    protected override void RemoveTensors(string adapter)
    {
        lora_embedding_A.Remove(adapter);
        lora_embedding_B.Remove(adapter);
        lora_magnitude_vector.Remove(adapter);
        if (MergeNorms.Remove(adapter, out var n)) n.Dispose();
    }

    protected override IEnumerable<Parameter> TrainableTensors(string adapter)
    {
        if (lora_embedding_A.Contains(adapter)) yield return lora_embedding_A[adapter];
        if (lora_embedding_B.Contains(adapter)) yield return lora_embedding_B[adapter];
        if (lora_magnitude_vector.Contains(adapter)) yield return lora_magnitude_vector[adapter].weight;
    }

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
                var sub = result.index_select(0, idx);
                result = result.index_add(0, idx, (Apply(name, ids.index_select(0, idx), sub) - sub).to(resultType), 1);
            }
            return result.MoveToOuterDisposeScope();
        }
        foreach (var name in ActiveAdapters) result = Apply(name, ids, result);
        return result.to(resultType).MoveToOuterDisposeScope();
    }

    /// <summary>The output after adding one adapter to <paramref name="result"/> (DoRA rescales the running result too).</summary>
    Tensor Apply(string name, Tensor ids, Tensor result)
    {
        var s = Settings[name];
        var lora = LoraEmbed(name, ids) * s.Scaling;
        if (!s.UseDora) return result + lora;
        var norm = linalg.norm(BaseWeight.to(lora.dtype).t() + s.Scaling * B(name).matmul(A(name)).detach(), dims: new long[] { 1 }).detach();
        var scale = Magnitude(name)! / norm;
        return scale * result + scale * lora;
    }

    public override Tensor DeltaWeight(string adapter)
    {
        using var _ = no_grad();
        return (B(adapter).matmul(A(adapter)) * ScalingOf(adapter)).t().contiguous();
    }

    protected override Tensor ComputeMerged(string adapter, out Tensor? doraNorm, ScalarType? dtype = null)
    {
        doraNorm = null;
        var dt = dtype ?? A(adapter).dtype;
        var delta = (B(adapter).to(dt).matmul(A(adapter).to(dt)) * ScalingOf(adapter)).t();
        var combined = BaseWeight.to(dt) + delta;
        if (Settings[adapter].UseDora)
        {
            doraNorm = linalg.norm(combined.t(), dims: new long[] { 1 });
            combined = (Magnitude(adapter)!.to(dt) / doraNorm).unsqueeze(0) * combined;
        }
        return combined;
    }

    protected override void UnmergeOne(string adapter)
    {
        using var scope = NewDisposeScope();
        var w = BaseWeight;
        var delta = DeltaWeight(adapter);
        if (!Settings[adapter].UseDora)
        {
            w.sub_(delta.to(w.dtype));
            return;
        }
        if (!MergeNorms.Remove(adapter, out var norm))
            throw new PeftSharpException($"DoRA adapter '{adapter}' cannot be unmerged: its merge-time weight norm is unknown");
        var factor = (Magnitude(adapter)! / norm).unsqueeze(0);
        w.copy_((w.to(delta.dtype) / factor - delta).to(w.dtype));
        norm.Dispose();
    }

    protected override (string A, string B) StateKeys => ("lora_embedding_A", "lora_embedding_B");
    protected override Tensor AOf(string adapter) => A(adapter);
    protected override Tensor BOf(string adapter) => B(adapter);
    protected override Tensor? MagnitudeOf(string adapter) => Magnitude(adapter);
}
