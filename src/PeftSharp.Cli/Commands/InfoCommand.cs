using System.CommandLine;
using PeftSharp.Models;
using PeftSharp.Quantization;

namespace PeftSharp.Cli.Commands;

/// <summary><c>peft info --model DIR</c>: architecture, parameter count, dtype, memory.</summary>
public static class InfoCommand
{
    public static Command Create()
    {
        var model = Cli.ModelOption();
        var cmd = new Command("info", "Describe a model folder: architecture, parameters, dtype, memory") { model };
        cmd.SetHandler((pr, o) =>
        {
            var dir = Cli.ModelDir(pr, model);
            var config = AutoModel.LoadConfig(dir);
            using var m = AutoModel.FromPretrained(dir);
            // 4-bit layers keep their weight as packed buffers: count their logical size and stored bytes.
            var quantized = QuantizedModelLoader.QuantizedLayers(m).ToList();
            long parameters = m.ParameterCount() + quantized.Sum(l => l.Layer.QuantState.NumElements);
            var storedDType = config.DType ?? config.TorchDType ?? "float32";
            long bytes = m.state_dict().Values.Sum(t => t.numel() * t.element_size());
            var q = QuantizedModelLoader.StoredConfig(config);
            var quantization = q is null ? null : $"bitsandbytes 4-bit {q.Bnb4bitQuantType}{(q.Bnb4bitUseDoubleQuant ? " + double quant" : "")}, {quantized.Count} linear layers, compute {q.Bnb4bitComputeDType ?? "float32"}";
            var info = new
            {
                Model = dir,
                ModelType = config.ModelType,
                Architecture = m.GetType().Name,
                Parameters = parameters,
                Layers = config.NumHiddenLayers,
                HiddenSize = config.HiddenSize,
                VocabSize = config.VocabSize,
                StoredDtype = storedDType,
                LoadedDtype = m.DType.ToString(),
                MemoryBytes = bytes,
                Quantization = quantization,
                MklKernels = PeftSharp.Runtime.MklAmdDispatch.Status,
                Cpu = PeftSharp.Runtime.CpuCapabilities.Current.Describe(),
                Bf16Compute = PeftSharp.Runtime.Bf16Policy.ComputeDtype == TorchSharp.torch.ScalarType.BFloat16 ? "bfloat16" : "float32",
            };
            if (pr.GetValue(Cli.JsonOption)) Cli.WriteJson(o, info);
            else
            {
                o.WriteLine($"model         {dir}");
                o.WriteLine($"architecture  {info.Architecture} (model_type {info.ModelType})");
                o.WriteLine($"parameters    {parameters:N0}");
                o.WriteLine($"layers        {info.Layers}, hidden {info.HiddenSize}, vocab {info.VocabSize}");
                o.WriteLine($"dtype         stored {storedDType}, loaded {info.LoadedDtype}");
                o.WriteLine($"memory        {bytes / 1048576.0:F1} MiB of weights");
                if (quantization is not null) o.WriteLine($"quantization  {quantization}");
                o.WriteLine($"mkl kernels   {info.MklKernels}");
                o.WriteLine($"cpu           {info.Cpu}");
                o.WriteLine($"bf16 compute  {info.Bf16Compute} (what bf16: true computes in on this CPU)");
            }
            return 0;
        });
        return cmd;
    }
}
