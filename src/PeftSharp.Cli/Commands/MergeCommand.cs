using System.CommandLine;
using System.Globalization;
using PeftSharp.Models;
using PeftSharp.Tuners;

namespace PeftSharp.Cli.Commands;

/// <summary>
/// <c>peft merge --model DIR --adapter DIR [--adapter DIR2 --weights 0.7,0.3 --combination cat|linear|svd] --out DIR</c>:
/// folds one adapter (or a weighted combination, peft's add_weighted_adapter) into the base weights and writes a
/// Hugging Face model folder.
/// </summary>
public static class MergeCommand
{
    public static Command Create()
    {
        var model = Cli.ModelOption();
        var adapters = new Option<string[]>("--adapter") { Description = "Adapter folder (repeat for a weighted combination; NAME=DIR names it)", Required = true, AllowMultipleArgumentsPerToken = false };
        var weights = new Option<string?>("--weights") { Description = "Comma-separated weights, one per adapter (default 1 each)" };
        var combination = new Option<string>("--combination") { Description = "cat, linear or svd (peft's combination_type)", DefaultValueFactory = _ => "svd" };
        var svdRank = new Option<int?>("--svd-rank") { Description = "Rank of an svd combination (default: the largest source rank)" };
        var output = new Option<string>("--out") { Description = "Output model folder", Required = true };
        var device = Cli.DeviceOption();
        var cmd = new Command("merge", "Merge LoRA adapter(s) into a model and save it as a Hugging Face folder") { model, adapters, weights, combination, svdRank, output, device };
        cmd.SetHandler((pr, o) =>
        {
            var specs = pr.GetValue(adapters)!.Select((a, i) => ParseAdapter(a, i)).ToList();
            var w = ParseWeights(pr.GetValue(weights), specs.Count);
            var modelDir = Cli.ModelDir(pr, model);
            var outDir = pr.GetValue(output)!;
            var peft = PeftModel.LoadWithAdapters(AutoPeftModel.LoadBase(modelDir, specs[0].Dir, Cli.ParseDevice(pr.GetValue(device)!)), specs);
            string merged = specs[0].Name;
            if (specs.Count > 1 || w[0] != 1.0)
            {
                merged = "merged";
                while (peft.Adapters.Contains(merged)) merged += "_";
                peft.AddWeightedAdapter(specs.Select(s => s.Name).ToList(), w, merged, pr.GetValue(combination)!, pr.GetValue(svdRank));
            }
            peft.SetAdapter(merged);
            var report = peft.ParameterReport(merged);
            peft.SaveMerged(outDir);
            PeftSharp.IO.CompanionFiles.Copy(modelDir, outDir, tokenizerDir: PeftSharp.IO.HfHubCache.ResolveFolder(specs[0].Dir, "adapter"));
            if (pr.GetValue(Cli.JsonOption))
                Cli.WriteJson(o, new { Out = outDir, Adapters = specs.Select(s => s.Dir), Weights = w, Combination = specs.Count > 1 ? pr.GetValue(combination) : null, report.MergedChangedParameters, report.TargetedWeightParameters });
            else
            {
                o.WriteLine($"wrote {outDir}: the weights of {modelDir} with {string.Join(" + ", specs.Select((s, i) => specs.Count > 1 ? $"{w[i].ToString(CultureInfo.InvariantCulture)}*{s.Dir}" : s.Dir))} merged in ({modelDir} itself is unchanged)");
                o.WriteLine($"the merge changed {report.MergedChangedParameters:N0} of {report.TargetedWeightParameters:N0} parameters in {report.Modules.Count} modules");
            }
            return 0;
        });
        return cmd;
    }

    static (string Name, string Dir) ParseAdapter(string s, int i)
    {
        int eq = s.IndexOf('=');
        return eq > 0 && !Directory.Exists(s) ? (s[..eq], s[(eq + 1)..]) : ($"adapter{i}", s);
    }

    static double[] ParseWeights(string? s, int count)
    {
        if (s is null) return Enumerable.Repeat(1.0, count).ToArray();
        var w = s.Split(',', StringSplitOptions.TrimEntries).Select(x => double.TryParse(x, NumberStyles.Float, CultureInfo.InvariantCulture, out var v) ? v
            : throw new ArgumentException($"--weights: '{x}' is not a number")).ToArray();
        if (w.Length != count) throw new ArgumentException($"--weights has {w.Length} values for {count} adapters");
        return w;
    }
}
