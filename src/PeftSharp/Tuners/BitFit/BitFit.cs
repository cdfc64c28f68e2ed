using System.Text.Json.Nodes;
using PeftSharp.Models;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;
using static TorchSharp.torch.nn;

namespace PeftSharp.Tuners.BitFit;

/// <summary>
/// BitFit (Ben Zaken et al.): only biases train, all of them (LayerNorm biases included), plus the task head.
/// Not a peft method: PeftSharp's own <c>peft_type: BITFIT</c>. For models without biases (Llama family),
/// <see cref="TargetModules"/> names the projections that get zero-initialized biases (default: every linear layer
/// but the output head).
/// </summary>
public sealed record BitFitConfig : PeftConfig
{
    public const string Type = "BITFIT";
    public override string PeftType => Type;

    /// <summary>Bias-less modules that get a new zero bias; null = every linear layer without one (none on BERT/GPT-2).</summary>
    public StringOrList? TargetModules { get; init; }
    /// <summary>Modules trained fully (the task head); SEQ_CLS adds classifier/score as peft does.</summary>
    public IReadOnlyList<string>? ModulesToSave { get; init; }

    public static BitFitConfig FromJson(JsonObject json, string source)
    {
        var r = new ConfigReader(json, source);
        var c = ReadCommon(new BitFitConfig(), r) with
        {
            TargetModules = r.StringOrList("target_modules"),
            ModulesToSave = r.StringOrList("modules_to_save") is { } m ? (m.IsString ? new[] { m.Pattern! } : m.Items) : null,
        };
        PeftMethods.WarnUnknown(r);
        return c;
    }

    protected override void WriteFields(JsonObject o)
    {
        o["target_modules"] = TargetModules?.ToJson();
        o["modules_to_save"] = ModulesToSave is null ? null : new JsonArray(ModulesToSave.Select(x => (JsonNode?)x).ToArray());
    }
}

/// <summary>
/// A module whose output gets a trainable per-adapter bias delta (zero at start): <c>y = base(x) + Δb</c>. Saved as
/// the effective bias <c>b + Δb</c> under "bias" (or Δb alone where the base has none).
/// </summary>
public sealed class BitFitLayer : AdapterLayer
{
    readonly AdapterParameters bias_delta = new();

    public BitFitLayer(Module<Tensor, Tensor> original) : base("BitFitLayer", original)
    {
        RegisterComponents();
    }

    Parameter? BaseBias => base_layer.named_parameters(false).FirstOrDefault(p => p.name == "bias").parameter;

    /// <summary>Output features: the bias length, or the weight's output dimension.</summary>
    long Features => BaseBias?.shape[0] ?? base_layer switch
    {
        Conv1D c => c.OutFeatures,
        _ => base_layer.named_parameters(false).First(p => p.name == "weight").parameter.shape[0],
    };

    public void Add(string adapter)
    {
        CheckNew(adapter);
        var w = base_layer.parameters().First();
        bias_delta.Add(adapter, new Parameter(zeros(Features, w.dtype, w.device)));
        Register(adapter, trainable: true);
    }

    public override Tensor forward(Tensor x)
    {
        var y = base_layer.call(x);
        if (AdaptersDisabled) return y;
        if (RowAdapters is { } rows)
        {
            if (rows.Distinct.Any(bias_delta.Contains)) throw new PeftSharpException("mixed-adapter batches are not supported for BitFit");
            return y;
        }
        foreach (var n in ActiveAdapters)
            if (!Merged.Contains(n)) y = y + bias_delta[n];
        return y;
    }

    protected override IEnumerable<Parameter> TrainableTensors(string adapter) => new[] { bias_delta[adapter] };
    protected override void RemoveTensors(string adapter) => bias_delta.Remove(adapter);

    protected override void MergeOne(string adapter)
    {
        var b = BaseBias ?? throw new PeftSharpException($"BitFit adapter '{adapter}' added a bias to a module without one; it cannot be merged into the base weights");
        b.add_(bias_delta[adapter]);
    }

    protected override void UnmergeOne(string adapter) => BaseBias!.sub_(bias_delta[adapter]);

    public override IEnumerable<(string Key, Tensor Value)> AdapterState(string adapter)
    {
        if (!bias_delta.Contains(adapter)) yield break;
        var d = bias_delta[adapter];
        yield return ("bias", BaseBias is { } b && !Merged.Contains(adapter) ? (b + d).detach() : d.detach());
    }

    public override bool LoadAdapterState(string adapter, string key, Tensor value)
    {
        if (key != "bias" || !bias_delta.Contains(adapter)) return false;
        var d = bias_delta[adapter];
        if (!d.shape.SequenceEqual(value.shape)) throw new PeftFormatException(null, $"bias has shape [{string.Join(", ", value.shape)}], the module expects [{string.Join(", ", d.shape)}]");
        using var _ = no_grad();
        var v = value.to(d.dtype, d.device);
        d.copy_(BaseBias is { } b ? v - b : v);
        return true;
    }
}

public sealed class BitFitMethod : IPeftMethod
{
    public string PeftType => BitFitConfig.Type;

    public IReadOnlyList<Recipe> Recipes { get; } = new[] { AdapterHub.AdapterFamilyTypes.Recipe("bitfit") };
    public IReadOnlyList<BenchEntry> Bench { get; } = new[] { AdapterHub.AdapterFamilyTypes.BitFitBench };

    public PeftConfig ParseConfig(JsonObject json, string source) => BitFitConfig.FromJson(json, source);

    static BitFitConfig Cast(PeftConfig c) => c as BitFitConfig ?? throw new PeftConfigException($"BitFit expects a BitFitConfig; got {c.GetType().Name}");

    static bool HasOwnBias(nn.Module m) => m is not IAdapterLayer && m.named_parameters(false).Any(p => p.name == "bias");

    public PeftConfig Prepare(PreTrainedModel model, PeftConfig config)
    {
        var c = Cast(config);
        // The task head trains fully: SEQ_CLS/TOKEN_CLS as peft, and any classifier of a non-LM model without a task_type.
        var top = model.named_children().Select(ch => ch.name).ToHashSet();
        var heads = c.TaskType is "SEQ_CLS" or "TOKEN_CLS" || (c.TaskType is null && !model.IsCausalLM)
            ? new[] { "classifier", "score" }.Where(top.Contains).ToArray() : Array.Empty<string>();
        if (heads.Length > 0) c = c with { ModulesToSave = (c.ModulesToSave ?? Array.Empty<string>()).Concat(heads.Where(h => c.ModulesToSave?.Contains(h) != true)).ToList() };
        if (c.TargetModules is null)
        {
            var biasless = TargetMatcher.ExpandAllLinear(model, c.TaskType)
                .Where(n => ModuleSurgery.Get(model, n) is var m && !HasOwnBias(m) && m is not IAdapterLayer)
                .Select(n => n.Split('.')[^1]).Distinct().ToList();
            if (biasless.Count > 0) c = c with { TargetModules = StringOrList.Of(biasless) };
        }
        return c;
    }

    /// <summary>At most one bias per module output: bounded by the model's own sizes, whatever the config says.</summary>
    public long AdapterElements(PreTrainedModel model, PeftConfig config) =>
        TargetMatcher.Candidates(model).Aggregate(0L, (sum, m) => AdapterSize.Add(sum, AdapterSize.Dims(m.Module).Out));

    public IReadOnlyList<string> Inject(PreTrainedModel model, PeftConfig config, string adapterName)
    {
        var c = Cast(config);
        var head = c.ModulesToSave ?? Array.Empty<string>();
        bool InHead(string name) => head.Any(h => name == h || name.EndsWith("." + h, StringComparison.Ordinal) || name.Contains(h + ".", StringComparison.Ordinal));
        var spec = new TargetSpec { Targets = c.TargetModules ?? StringOrList.Of(Array.Empty<string>()) };
        var names = TargetMatcher.Candidates(model)
            .Where(m => !InHead(m.Name) && m.Module is nn.Module<Tensor, Tensor> && (HasOwnBias(m.Module) || m.Module is BitFitLayer
                || (m.Module is TorchSharp.Modules.Linear or Conv1D && TargetMatcher.Matches(spec, m.Name))))
            .Select(m => m.Name).ToList();
        if (names.Count == 0) throw new PeftConfigException("BitFit: the model has no biases and target_modules matched no linear layer to add one to");
        foreach (var name in names)
        {
            var module = ModuleSurgery.Get(model, name);
            var layer = module as BitFitLayer ?? new BitFitLayer((nn.Module<Tensor, Tensor>)module);
            if (!ReferenceEquals(layer, module)) ModuleSurgery.Replace(model, name, layer);
            layer.Add(adapterName);
        }
        if (head.Count > 0) Lora.LoraMethod.WrapModulesToSave(model, head, adapterName, !c.InferenceMode);
        return names;
    }
}
