using System.CommandLine;
using PeftSharp.Models;

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
            var dir = pr.GetValue(model)!;
            var config = AutoModel.LoadConfig(dir);
            using var m = AutoModel.FromPretrained(dir);
            long parameters = m.ParameterCount();
            var storedDType = config.DType ?? config.TorchDType ?? "float32";
            long bytes = m.parameters().Sum(p => p.numel() * p.element_size());
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
            }
            return 0;
        });
        return cmd;
    }
}
