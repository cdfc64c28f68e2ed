using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;
using static TorchSharp.torch.nn;

namespace PeftSharp.Tuners.Lora;

/// <summary>
/// peft 0.20's add_weighted_adapter for LoRA (peft-spec §3.9, fixtures multi/llama-tiny). With sᵢ the source
/// scalings and wᵢ the weights:
/// <list type="bullet">
/// <item>cat: rank Σrᵢ, A' = rows [wᵢsᵢAᵢ], B' = cols [Bᵢ]; exactly Σ wᵢsᵢBᵢAᵢ.</item>
/// <item>linear: equal ranks required; A' = Σ sign(wᵢsᵢ)√|wᵢsᵢ|·Aᵢ, B' = Σ √|wᵢsᵢ|·Bᵢ (cross terms with several adapters).</item>
/// <item>svd: rank svd_rank or max rᵢ; truncated SVD of Σ wᵢsᵢ·ΔWᵢ where ΔWᵢ already includes sᵢ (so sᵢ counts twice, as peft).</item>
/// </list>
/// The new adapter has lora_alpha = r (scaling 1 unless the first source uses rsLoRA, inherited as in peft).
/// </summary>
public static class LoraWeighted
{
    public static readonly string[] CombinationTypes = { "svd", "linear", "cat" };

    public static void Add(PeftModel peft, IReadOnlyList<string> adapters, IReadOnlyList<double> weights, string newName, string combinationType, int? svdRank)
    {
        if (adapters.Count == 0) throw new PeftSharpException("add_weighted_adapter needs at least one adapter");
        if (weights.Count != adapters.Count) throw new PeftSharpException($"add_weighted_adapter: {adapters.Count} adapters but {weights.Count} weights");
        if (!CombinationTypes.Contains(combinationType))
            throw new PeftSharpException($"combination_type '{combinationType}' is not supported (supported: {string.Join(", ", CombinationTypes)})");
        if (peft.Configs.ContainsKey(newName))
        {
            PeftMethods.Warn($"adapter '{newName}' already exists; add_weighted_adapter does nothing (as peft)");
            return;
        }
        var configs = adapters.Select(a => peft.Configs.TryGetValue(a, out var c) ? c as LoraConfig ?? throw new PeftSharpException($"adapter '{a}' is not a LoRA adapter")
            : throw new PeftSharpException($"Adapter {a} does not exist")).ToList();
        if (adapters.Count == 1) combinationType = "linear";

        var ranks = configs.Select(c => c.RankPattern.Count == 0 ? c.R : Math.Max(c.R, (int)c.RankPattern.Max(kv => kv.Value))).ToList();
        int newRank = combinationType switch
        {
            "linear" when ranks.Distinct().Count() != 1 =>
                throw new PeftSharpException("All adapters must have the same r value when using combination_type linear, ties, dare_ties or dare_linear."),
            "linear" => ranks[0],
            "cat" => ranks.Sum(),
            _ => svdRank ?? ranks.Max(),
        };

        var targetTypes = configs.Select(c => c.TargetModules!.IsString).Distinct().ToList();
        if (targetTypes.Count > 1)
            throw new PeftSharpException("all adapter configs should follow the same target modules type; combining list and regex target_modules is not supported");
        var targets = targetTypes[0]
            ? StringOrList.Of(string.Join("|", configs.Select(c => $"({c.TargetModules!.Pattern})")))
            : StringOrList.Of(configs.SelectMany(c => c.TargetModules!.Items!).Distinct());

        var config = configs[0] with
        {
            R = newRank,
            LoraAlpha = newRank,
            TargetModules = targets,
            RankPattern = Array.Empty<KeyValuePair<string, double>>(),
            AlphaPattern = Array.Empty<KeyValuePair<string, double>>(),
            LayersToTransform = null,
            LayersPattern = null,
        };
        peft.AddAdapter(newName, config);

        using var _ = no_grad();
        foreach (var (name, layer) in peft.AdapterLayers())
        {
            if (layer is not LoraLayer lora || !lora.Adapters.Contains(newName)) continue;
            var sources = adapters.Select((a, i) => (Name: a, Weight: weights[i])).Where(s => lora.Adapters.Contains(s.Name)).ToList();
            if (sources.Count == 0) throw new PeftSharpException($"add_weighted_adapter: no source adapter in {name}");
            using var scope = NewDisposeScope();
            var (a, b) = Factors(lora, newName);
            switch (combinationType)
            {
                case "cat":
                {
                    var catA = cat(sources.Select(s => Factors(lora, s.Name).A * (s.Weight * lora.ScalingOf(s.Name))).ToArray(), 0);
                    var catB = cat(sources.Select(s => Factors(lora, s.Name).B).ToArray(), 1);
                    a.zero_();
                    b.zero_();
                    a.narrow(0, 0, catA.shape[0]).copy_(catA);
                    b.narrow(1, 0, catB.shape[1]).copy_(catB);
                    break;
                }
                case "linear":
                {
                    Tensor? sumA = null, sumB = null;
                    foreach (var s in sources)
                    {
                        double ws = s.Weight * lora.ScalingOf(s.Name);
                        double root = Math.Sqrt(Math.Abs(ws));
                        var (sa, sb) = Factors(lora, s.Name);
                        sumA = sumA is null ? sa * (ws >= 0 ? root : -root) : sumA + sa * (ws >= 0 ? root : -root);
                        sumB = sumB is null ? sb * root : sumB + sb * root;
                    }
                    a.copy_(sumA!);
                    b.copy_(sumB!);
                    break;
                }
                default:
                {
                    // ΔWᵢ in B·A orientation ([out,in], [dim,num] for embeddings) already carries sᵢ.
                    Tensor? m = null;
                    foreach (var s in sources)
                    {
                        var (sa, sb) = Factors(lora, s.Name);
                        var term = sb.matmul(sa) * (lora.ScalingOf(s.Name) * s.Weight * lora.ScalingOf(s.Name));
                        m = m is null ? term : m + term;
                    }
                    var (u, sv, vh) = linalg.svd(m!, fullMatrices: true);
                    int k = (int)Math.Min(newRank, sv.shape[0]);
                    var newB = u.narrow(1, 0, k).matmul(diag(sv.narrow(0, 0, k)));
                    var newA = vh.narrow(0, 0, k);
                    if (newA.shape[0] != a.shape[0])
                        throw new PeftSharpException($"add_weighted_adapter svd: rank {newRank} exceeds the size of {name} ({string.Join("x", m!.shape)})");
                    a.copy_(newA);
                    b.copy_(newB);
                    break;
                }
            }
        }
    }

    /// <summary>(A [r, in], B [out, r]) of an adapter in a LoRA layer, as live tensors.</summary>
    static (Tensor A, Tensor B) Factors(LoraLayer layer, string adapter) => (layer.AOf(adapter), layer.BOf(adapter));
}
