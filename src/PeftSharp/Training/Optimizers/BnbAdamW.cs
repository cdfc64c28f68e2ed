using PeftSharp.IO;
using PeftSharp.Quantization;
using TorchSharp;
using static TorchSharp.torch;

namespace PeftSharp.Training.Optimizers;

/// <summary>
/// Settings of <see cref="BnbAdamW"/>: bitsandbytes' AdamW family. <see cref="StateBits"/> 8 keeps both moments as
/// 8-bit blockwise codes; <see cref="Paged"/> keeps all state in host memory and streams it to the parameter's device
/// for each update.
/// </summary>
public sealed record BnbAdamWOptions
{
    public double Beta1 { get; init; } = 0.9;
    public double Beta2 { get; init; } = 0.999;
    public double Eps { get; init; } = 1e-8;
    /// <summary>8 (blockwise-quantized moments) or 32 (float32 moments).</summary>
    public int StateBits { get; init; } = 8;
    /// <summary>Elements per absmax block of the 8-bit state (bnb's Optimizer2State uses 2048).</summary>
    public int BlockSize { get; init; } = 2048;
    /// <summary>Parameters with fewer elements keep float32 state (bnb's <c>min_8bit_size</c>).</summary>
    public long Min8bitSize { get; init; } = 4096;
    /// <summary>State lives in host memory between steps (bnb's paged optimizers). A no-op for parameters on the CPU.</summary>
    public bool Paged { get; init; }

    /// <summary>
    /// HF TrainingArguments' <c>optim</c> names this class covers: adamw_8bit / adamw_bnb_8bit, paged_adamw_8bit,
    /// paged_adamw_32bit. Returns null for adamw_torch (and adamw_hf), which are the plain float32 AdamW.
    /// </summary>
    public static BnbAdamWOptions? FromOptimName(string optim, string where = "optim") => optim switch
    {
        "adamw_torch" or "adamw_hf" or "adamw_torch_fused" => null,
        "adamw_8bit" or "adamw_bnb_8bit" => new BnbAdamWOptions { StateBits = 8 },
        "paged_adamw_8bit" => new BnbAdamWOptions { StateBits = 8, Paged = true },
        "paged_adamw_32bit" => new BnbAdamWOptions { StateBits = 32, Paged = true },
        _ => throw new PeftConfigException($"{where}: '{optim}' is not supported (expected adamw_torch, adamw_8bit, paged_adamw_8bit or paged_adamw_32bit)"),
    };

    public void Validate()
    {
        if (StateBits is not (8 or 32)) throw new PeftConfigException($"optimizer state bits must be 8 or 32 (found {StateBits})");
        if (BlockSize <= 0) throw new PeftConfigException($"optimizer block size must be positive (found {BlockSize})");
        if (Beta1 is < 0 or >= 1 || Beta2 is < 0 or >= 1) throw new PeftConfigException($"betas must be in [0, 1) (found {Beta1}, {Beta2})");
    }
}

/// <summary>
/// AdamW with bitsandbytes' memory savings (bnb.optim.AdamW8bit / PagedAdamW8bit / PagedAdamW32bit). The update is
/// torch's AdamW in float32: p *= 1 − lr·wd; m = lerp(m, g, 1−β1); v = β2·v + (1−β2)·g²; p −= lr/(1−β1ᵗ) · m/(√v/√(1−β2ᵗ) + eps).
/// <para>8-bit state: for parameters with at least <see cref="BnbAdamWOptions.Min8bitSize"/> elements, m is stored as
/// uint8 codes of the signed dynamic map and v of the unsigned one, with one float32 absmax per block of
/// <see cref="BnbAdamWOptions.BlockSize"/> elements. Each step dequantizes, updates in float32 and re-quantizes to the
/// nearest code (bnb's torch reference; its CUDA kernel can pick a neighbouring code). About 2 bytes per parameter
/// instead of 8.</para>
/// <para>Paged: bnb backs state with CUDA unified memory that the driver pages out under pressure. The equivalent here
/// keeps every state tensor in host memory (pinned when the parameter is on a GPU) and copies it to the device for
/// its update and back afterwards, so device memory holds one parameter's state at a time. For parameters on the CPU
/// there is nothing to page: the option changes nothing.</para>
/// </summary>
public sealed class BnbAdamW : IOptimizer
{
    readonly BnbAdamWOptions _o;
    readonly Dictionary<string, State> _state = new();
    readonly Dictionary<(DeviceType, int), (Tensor Signed, Tensor SignedBounds, Tensor Unsigned, Tensor UnsignedBounds)> _maps = new();

    public BnbAdamW(IReadOnlyList<ParamGroup> groups, BnbAdamWOptions? options = null)
    {
        _o = options ?? new BnbAdamWOptions();
        _o.Validate();
        Groups = groups;
        var dup = groups.SelectMany(g => g.Params).GroupBy(p => p.Name).FirstOrDefault(g => g.Count() > 1);
        if (dup is not null) throw new PeftSharpException($"parameter '{dup.Key}' is in two optimizer groups");
    }

    /// <summary>One group with a fixed learning rate and weight decay.</summary>
    public BnbAdamW(IEnumerable<(string Name, Tensor Param)> parameters, double lr, double weightDecay = 0.0, BnbAdamWOptions? options = null)
        : this(new[] { new ParamGroup { Name = "all", Params = parameters.ToList(), BaseLr = lr, WeightDecay = weightDecay, Lr = lr } }, options) { }

    /// <summary>The optimizer for HF's <c>optim</c> name: <see cref="AdamW"/> for adamw_torch, else this class.</summary>
    public static IOptimizer Create(string optim, IReadOnlyList<ParamGroup> groups, double beta1 = 0.9, double beta2 = 0.999, double eps = 1e-8) =>
        BnbAdamWOptions.FromOptimName(optim) is { } o
            ? new BnbAdamW(groups, o with { Beta1 = beta1, Beta2 = beta2, Eps = eps })
            : new AdamW(groups, beta1, beta2, eps);

    public BnbAdamWOptions Options => _o;
    public IReadOnlyList<ParamGroup> Groups { get; }
    public long StepCount { get; private set; }

    /// <summary>Bytes held by optimizer state (codes, absmax and float32 moments).</summary>
    public long StateBytes => _state.Values.Sum(s => s.Tensors().Sum(t => t.numel() * t.ElementSize));

    /// <summary>Where the state of <paramref name="name"/> lives between steps (null before its first step).</summary>
    public Device? StateDevice(string name) => _state.TryGetValue(name, out var s) ? s.M.device : null;

    /// <summary>One update of every parameter that has a gradient, with its group's current lr and weight decay.</summary>
    public void Step()
    {
        StepCount++;
        using var _ = no_grad();
        foreach (var g in Groups)
            foreach (var (name, p) in g.Params)
            {
                using var grad = p.grad;
                if (grad is not null) Update(name, p, grad, g.Lr, g.WeightDecay);
            }
    }

    void Update(string name, Tensor p, Tensor grad, double lr, double weightDecay)
    {
        using var scope = NewDisposeScope();
        using var _ = no_grad();
        if (!_state.TryGetValue(name, out var s)) _state[name] = s = NewState(p);
        double bc1 = 1 - Math.Pow(_o.Beta1, StepCount), bc2Sqrt = Math.Sqrt(1 - Math.Pow(_o.Beta2, StepCount));

        var (m, v) = Load(s, p);
        var g = grad.to(ScalarType.Float32);
        if (weightDecay != 0) p.mul_(1 - lr * weightDecay);
        m.lerp_(g, 1 - _o.Beta1);
        v.mul_(_o.Beta2).addcmul_(g, g, 1 - _o.Beta2);
        var denom = (v.sqrt() / bc2Sqrt).add_(_o.Eps);
        p.addcdiv_(m.to(p.dtype), denom.to(p.dtype), -lr / bc1);
        Store(s, m, v);
    }

    public void ZeroGrad()
    {
        foreach (var g in Groups)
            foreach (var (_, p) in g.Params)
                if (p.grad is { } grad) { grad.Dispose(); p.grad = null; }
    }

    sealed class State
    {
        public required Tensor M, V;            // float32 moments, or uint8 codes when quantized
        public Tensor? AbsmaxM, AbsmaxV;        // per block, quantized state only
        public bool Quantized => AbsmaxM is not null;
        public IEnumerable<Tensor> Tensors() => AbsmaxM is null ? new[] { M, V } : new[] { M, V, AbsmaxM, AbsmaxV! };
    }

    static bool Same(Device a, Device b) => a.type == b.type && a.index == b.index;

    Device HostFor(Tensor p) => _o.Paged ? CPU : p.device;

    State NewState(Tensor p)
    {
        var host = HostFor(p);
        bool pin = host.type == DeviceType.CPU && p.device.type != DeviceType.CPU;
        Tensor Make(ScalarType dt, long n)
        {
            var t = zeros(n, dtype: dt, device: host);
            if (pin) t = t.pin_memory();
            return t.DetachFromDisposeScope();
        }
        long numel = p.numel();
        if (_o.StateBits == 8 && numel >= _o.Min8bitSize)
        {
            long blocks = (numel + _o.BlockSize - 1) / _o.BlockSize;
            // Codes of 0.0: index 127 of the signed map, index 0 of the unsigned one (absmax 0 makes both exact zeros).
            var m = Make(ScalarType.Byte, numel);
            m.fill_(Array.IndexOf(CodeBooks.DynamicSigned, 0f));
            return new State { M = m, V = Make(ScalarType.Byte, numel), AbsmaxM = Make(ScalarType.Float32, blocks), AbsmaxV = Make(ScalarType.Float32, blocks) };
        }
        return new State { M = Make(ScalarType.Float32, numel), V = Make(ScalarType.Float32, numel) };
    }

    /// <summary>The moments as float32 tensors of the parameter's shape on its device (fresh copies when paged or quantized).</summary>
    (Tensor M, Tensor V) Load(State s, Tensor p)
    {
        var dev = p.device;
        if (!s.Quantized)
        {
            var m = Same(s.M.device, dev) ? s.M : s.M.to(dev, non_blocking: true);
            var v = Same(s.V.device, dev) ? s.V : s.V.to(dev, non_blocking: true);
            return (m.view(p.shape), v.view(p.shape));
        }
        var maps = Maps(dev);
        var dm = Dequantize(s.M.to(dev), s.AbsmaxM!.to(dev), maps.Signed);
        var dv = Dequantize(s.V.to(dev), s.AbsmaxV!.to(dev), maps.Unsigned);
        return (dm.view(p.shape), dv.view(p.shape));
    }

    void Store(State s, Tensor m, Tensor v)
    {
        if (!s.Quantized)
        {
            // Unpaged float32 state was updated in place (m, v are views of it); paged state goes back to host memory.
            if (!Same(s.M.device, m.device))
            {
                s.M.copy_(m.reshape(-1));
                s.V.copy_(v.reshape(-1));
            }
            return;
        }
        var maps = Maps(m.device);
        var (cm, am) = Quantize(m.reshape(-1), maps.SignedBounds);
        var (cv, av) = Quantize(v.reshape(-1), maps.UnsignedBounds);
        s.M.copy_(cm); s.AbsmaxM!.copy_(am);
        s.V.copy_(cv); s.AbsmaxV!.copy_(av);
    }

    Tensor Dequantize(Tensor codes, Tensor absmax, Tensor map)
    {
        long n = codes.numel();
        var values = map.index_select(0, codes.to(ScalarType.Int64));
        long padded = absmax.numel() * _o.BlockSize;
        var scaled = nn.functional.pad(values, new long[] { 0, padded - n }).view(-1, _o.BlockSize) * absmax.unsqueeze(1);
        return scaled.reshape(-1).narrow(0, 0, n);
    }

    (Tensor Codes, Tensor Absmax) Quantize(Tensor x, Tensor bounds)
    {
        long n = x.numel();
        long blocks = (n + _o.BlockSize - 1) / _o.BlockSize;
        var blocked = nn.functional.pad(x, new long[] { 0, blocks * _o.BlockSize - n }).view(blocks, _o.BlockSize);
        var absmax = blocked.abs().amax(new long[] { 1 });
        var scaled = (blocked / absmax.clamp_min(1e-38).unsqueeze(1)).clamp_(-1, 1);
        var codes = bucketize(scaled.reshape(-1).narrow(0, 0, n), bounds).to(ScalarType.Byte);
        return (codes, absmax);
    }

    (Tensor Signed, Tensor SignedBounds, Tensor Unsigned, Tensor UnsignedBounds) Maps(Device dev)
    {
        var key = (dev.type, dev.index);
        if (_maps.TryGetValue(key, out var maps)) return maps;
        Tensor T(float[] a) => tensor(a, ScalarType.Float32).to(dev).DetachFromDisposeScope();
        maps = (T(CodeBooks.DynamicSigned), T(CodeBooks.Midpoints(CodeBooks.DynamicSigned)),
                T(CodeBooks.DynamicUnsigned), T(CodeBooks.Midpoints(CodeBooks.DynamicUnsigned)));
        _maps[key] = maps;
        return maps;
    }

    const string StepKey = "__step__";

    /// <summary>Writes the state (codes and absmax as stored) to a safetensors file so a resumed run continues exactly.</summary>
    public void Save(string path)
    {
        var tensors = new List<KeyValuePair<string, Tensor>>();
        foreach (var (name, s) in _state)
        {
            tensors.Add(new($"state1.{name}", s.M));
            tensors.Add(new($"state2.{name}", s.V));
            if (s.Quantized)
            {
                tensors.Add(new($"absmax1.{name}", s.AbsmaxM!));
                tensors.Add(new($"absmax2.{name}", s.AbsmaxV!));
            }
        }
        using var step = tensor(new[] { StepCount });
        tensors.Add(new(StepKey, step));
        SafetensorsWriter.Save(path, tensors);
    }

    public void Load(string path)
    {
        using var file = SafetensorsFile.Open(path);
        if (!file.Contains(StepKey)) throw new PeftFormatException(path, $"not an optimizer state file (no '{StepKey}')");
        using (var step = file.Load(StepKey)) StepCount = step.data<long>()[0];
        Clear();
        foreach (var (name, p) in Groups.SelectMany(g => g.Params))
        {
            if (!file.Contains($"state1.{name}")) continue;
            var s = NewState(p);
            foreach (var (key, target) in s.Tensors().Zip(new[] { "state1", "state2", "absmax1", "absmax2" }).Select(z => ($"{z.Second}.{name}", z.First)))
            {
                if (!file.Contains(key)) throw new PeftFormatException(path, $"'{key}' is missing");
                using var t = file.Load(key);
                if (t.dtype != target.dtype || t.numel() != target.numel())
                    throw new PeftFormatException(path, $"'{key}' is {t.dtype} with {t.numel()} elements; this optimizer expects {target.dtype} with {target.numel()} (other optim or parameter shape)");
                target.copy_(t.reshape(target.shape));
            }
            _state[name] = s;
        }
    }

    void Clear()
    {
        foreach (var s in _state.Values) foreach (var t in s.Tensors()) t.Dispose();
        _state.Clear();
    }

    public void Dispose()
    {
        Clear();
        foreach (var m in _maps.Values) { m.Signed.Dispose(); m.SignedBounds.Dispose(); m.Unsigned.Dispose(); m.UnsignedBounds.Dispose(); }
        _maps.Clear();
    }
}
