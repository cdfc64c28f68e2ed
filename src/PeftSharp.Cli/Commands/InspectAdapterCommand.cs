using System.CommandLine;
using PeftSharp.IO;
using PeftSharp.Models;
using PeftSharp.Tuners;

namespace PeftSharp.Cli.Commands;

/// <summary>
/// <c>peft inspect-adapter DIR [--model DIR]</c>: method, targets, ranks, size on disk, and the parameter counts
/// (HF's trainable/all line, the adapter's parameters, parameters the merge changes, rank of each ΔW). The counts
/// need the base model: --model, or base_model_name_or_path resolved from the adapter folder and its parents.
/// </summary>
public static class InspectAdapterCommand
{
    public static Command Create()
    {
        var dir = new Argument<string>("adapter") { Description = "Adapter folder (adapter_config.json + adapter_model.safetensors)" };
        var model = new Option<string?>("--model") { Description = "Base model folder (default: base_model_name_or_path)" };
        var cmd = new Command("inspect-adapter", "Describe a peft adapter folder: method, targets, ranks, parameter counts, size") { dir, model };
        cmd.SetHandler((pr, o) =>
        {
            var adapterDir = HfHubCache.ResolveFolder(pr.GetValue(dir)!, "adapter");
            var config = PeftMethods.LoadConfig(adapterDir);
            var method = PeftMethods.For(config);
            var description = method.Describe(config);
            var weightsPath = Path.Combine(adapterDir, method.WeightsFile);
            long bytes = FileSizes.OfFolder(adapterDir);
            long fileParams;
            int tensors;
            using (var f = SafetensorsFile.Open(weightsPath)) { tensors = f.Keys.Count(); fileParams = f.Entries.Values.Sum(e => e.NumElements); }

            var baseDir = pr.GetValue(model) ?? ResolveBase(adapterDir, config.BaseModelNameOrPath);
            AdapterParameterReport? report = null;
            IReadOnlyList<string>? targets = null;
            if (baseDir is not null)
            {
                var peft = AutoPeftModel.FromPretrained(adapterDir, baseDir);
                report = peft.ParameterReport();
                targets = report.Modules.Select(m => m.Module).ToList();
            }
            var info = new
            {
                Adapter = adapterDir,
                Method = description.Method,
                TaskType = config.TaskType,
                BaseModel = config.BaseModelNameOrPath,
                BaseModelResolved = baseDir,
                Settings = description.Fields,
                Tensors = tensors,
                FileParameters = fileParams,
                SizeOnDiskBytes = bytes,
                HfTrainableLine = report is null ? null : ParameterAccounting.FormatTrainable(report.AdapterParameters, report.AllParameters),
                AdapterParameters = report?.AdapterParameters,
                AllParameters = report?.AllParameters,
                MergedChangedParameters = report?.MergedChangedParameters,
                TargetedWeightParameters = report?.TargetedWeightParameters,
                Modules = report?.Modules.Select(m => new { m.Module, m.Kind, m.R, m.DeltaRank, m.AdapterElements, m.ChangedElements, m.WeightElements }),
            };
            if (pr.GetValue(Cli.JsonOption)) { Cli.WriteJson(o, info); return 0; }
            o.WriteLine($"adapter       {adapterDir}");
            o.WriteLine($"method        {info.Method}{(config.TaskType is null ? "" : $", task {config.TaskType}")}");
            foreach (var (label, text) in description.Lines) o.WriteLine($"{label,-13} {text}");
            o.WriteLine($"file          {tensors} tensors, {fileParams:N0} values, {bytes / 1024.0:F1} KiB on disk");
            if (report is null)
            {
                o.WriteLine($"counts        base model '{config.BaseModelNameOrPath}' not found; pass --model DIR for parameter counts");
                return 0;
            }
            o.WriteLine($"base model    {baseDir}");
            o.WriteLine($"HF (training) {info.HfTrainableLine}");
            o.WriteLine($"trainable     {report.AdapterParameters:N0} adapter parameters");
            o.WriteLine($"merge changes {report.MergedChangedParameters:N0} of {report.TargetedWeightParameters:N0} weights in {report.Modules.Count} modules");
            o.WriteLine("module                                         kind   r  rank(ΔW)  adapter params  changed");
            foreach (var m in report.Modules)
                o.WriteLine($"{m.Module,-46} {m.Kind,-5} {m.R,2} {(m.DeltaRank < 0 ? "-" : m.DeltaRank.ToString()),9} {m.AdapterElements,15:N0} {m.ChangedElements,8:N0}");
            return 0;
        });
        return cmd;
    }

    // peft writes base_model_name_or_path as given to from_pretrained: try it as is, then relative to the adapter folder and its parents.
    static string? ResolveBase(string adapterDir, string? name)
    {
        if (string.IsNullOrEmpty(name)) return null;
        if (Directory.Exists(name) && File.Exists(Path.Combine(name, "config.json"))) return name;
        if (HfHubCache.LooksLikeRepoId(name) && HfHubCache.TryResolve(name, HfHubCache.CacheDir()) is { } cached) return cached;
        for (var d = new DirectoryInfo(Path.GetFullPath(adapterDir)); d is not null; d = d.Parent)
        {
            var candidate = Path.Combine(d.FullName, name);
            if (File.Exists(Path.Combine(candidate, "config.json"))) return candidate;
        }
        return null;
    }
}
