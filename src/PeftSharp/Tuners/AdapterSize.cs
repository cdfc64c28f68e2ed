using PeftSharp.Models;
using PeftSharp.Quantization;
using PeftSharp.Runtime;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace PeftSharp.Tuners;

/// <summary>
/// Bounds on what an adapter_config.json can make PeftSharp allocate. Each method's config range-checks its own
/// fields against <see cref="MaxRank"/>/<see cref="MaxTokens"/>/<see cref="MaxWidth"/> when it is read, and each method
/// tells <see cref="PeftModel"/> how many elements its adapter will hold for the model it is put on
/// (<see cref="IPeftMethod.AdapterElements"/>), which <see cref="Check"/> compares with a limit before anything is allocated.
/// </summary>
public static class AdapterSize
{
    /// <summary>Largest rank (LoRA r, VeRA's projection rank, AdaLoRA init_r/target_r): far above any useful rank.</summary>
    public const int MaxRank = 1 << 16;
    /// <summary>Largest count of virtual tokens / prompt or prefix length.</summary>
    public const int MaxTokens = 1 << 16;
    /// <summary>Largest width (token_dim, encoder and bottleneck sizes): config.json's bound on hidden_size.</summary>
    public const int MaxWidth = 1 << 17;
    /// <summary>Largest count of layers/heads/LSTM layers an adapter config may name: config.json's bound.</summary>
    public const int MaxLayers = 4096;

    /// <summary>Adapters are allocated in float32.</summary>
    const long BytesPerElement = 4;

    /// <summary>
    /// (in, out) of a module a method wraps: a linear layer, GPT-2's Conv1D, a 4-bit linear, an embedding
    /// (rows, dim), or an adapter wrapper around one of them.
    /// </summary>
    public static (long In, long Out) Dims(nn.Module m) => m switch
    {
        Linear l => (l.in_features, l.out_features),
        Conv1D c => (c.InFeatures, c.OutFeatures),
        Linear4bit q => (q.InFeatures, q.OutFeatures),
        Embedding e => (e.weight!.shape[0], e.weight!.shape[1]),
        IAdapterLayer a => Dims(a.BaseLayer),
        _ => m.named_parameters(false).FirstOrDefault(p => p.name == "weight").parameter is { Dimensions: 2 } w ? (w.shape[1], w.shape[0]) : (0, 0),
    };

    /// <summary>Σ over the named modules of <paramref name="perModule"/>(name, in, out), in checked arithmetic (saturating on overflow).</summary>
    public static long Sum(nn.Module model, IEnumerable<string> names, Func<string, long, long, long> perModule)
    {
        long total = 0;
        foreach (var name in names)
        {
            var (i, o) = Dims(ModuleSurgery.Get(model, name));
            total = Add(total, perModule(name, i, o));
        }
        return total;
    }

    /// <summary>a + b, or long.MaxValue when it overflows.</summary>
    public static long Add(long a, long b) => a > long.MaxValue - b ? long.MaxValue : a + b;

    /// <summary>a × b (non-negative), or long.MaxValue when it overflows.</summary>
    public static long Mul(long a, long b) => a != 0 && b > long.MaxValue / a ? long.MaxValue : a * b;

    /// <summary>The byte limit an adapter's parameters must stay under (also bounded by the memory the machine has available).</summary>
    public static readonly ResourceLimit Limit = ResourceLimits.MaxAdapterBytes;

    /// <summary>
    /// Refuses an adapter whose parameters (<paramref name="elements"/> float32 values) exceed the limit or the memory
    /// available right now, naming <paramref name="source"/> (the adapter_config.json, or the adapter's name).
    /// </summary>
    public static void Check(long elements, string source, string peftType)
    {
        long bytes = Mul(elements, BytesPerElement);
        string what = $"{source}: the {peftType} adapter this config describes would hold {Describe(elements, bytes)}";
        Limit.Check(bytes, what);
        // Only with an explicit limit above the machine's memory: then the machine is the bound.
        if (AvailableBytes() is { } free && bytes > free)
            throw new PeftConfigException($"{what}, more than the {free / (1 << 20):N0} MiB of memory available; check its sizes (r, num_virtual_tokens, reduction_factor, ...)");
    }

    static string Describe(long elements, long bytes) =>
        elements == long.MaxValue ? "more parameters than 64-bit arithmetic counts" : $"{elements:N0} parameters ({bytes / (1 << 20):N0} MiB)";

    /// <summary>MemAvailable from /proc/meminfo (Linux; null elsewhere or unreadable).</summary>
    static long? AvailableBytes()
    {
        try
        {
            foreach (var line in File.ReadLines("/proc/meminfo"))
                if (line.StartsWith("MemAvailable:", StringComparison.Ordinal))
                    return long.Parse(line["MemAvailable:".Length..].Trim().Split(' ')[0]) * 1024;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or FormatException) { }
        return null;
    }
}
