using System.Text.Json.Nodes;
using PeftSharp.Training.Quickstart;

namespace PeftSharp.Tests.Cli;

/// <summary>
/// Every YAML in samples/ trains through `peft train` as the README tells users to run it: the quickstart base
/// (here a fresh, untrained one of the same architecture and tokenizer), two optimizer steps (AdaLoRA: just past its
/// schedule), outputs in a temp folder.
/// </summary>
public class SamplesTests
{
    static readonly Lazy<string> Root = new(() =>
    {
        var root = TestPaths.TempDir();
        var baseDir = Path.Combine(root, "quickstart-output", "base");
        using (var model = QuickstartTask.BuildModel(32, 2)) PeftSharp.Models.AutoModel.SavePretrained(model, baseDir);
        QuickstartTask.WriteTokenizer(baseDir);
        return root;
    });

    public static TheoryData<string> Samples()
    {
        var data = new TheoryData<string>();
        foreach (var f in Directory.GetFiles(TestPaths.RepoFile("samples"), "*.yaml").Order())
            if (Path.GetFileNameWithoutExtension(f) != "adapter_fusion") data.Add(Path.GetFileNameWithoutExtension(f));
        return data;
    }

    /// <summary>Runs samples/NAME.yaml for two steps; returns its output folder.</summary>
    static string Train(string name)
    {
        var root = Root.Value;
        var yaml = File.ReadAllText(TestPaths.RepoFile($"samples/{name}.yaml"))
            .Replace("quickstart-output/", Path.Combine(root, "quickstart-output") + "/")
            .Replace("samples-output/", Path.Combine(root, "samples-output") + "/")
            .Replace("samples/data/", TestPaths.RepoFile("samples/data") + "/")
            .Replace("tests/PeftSharp.Tests/TestData/models/", TestPaths.Data("models") + "/");
        var file = Path.Combine(root, $"{name}.yaml");
        // AdaLoRA's budget schedule needs tinit + tfinal < total steps: its sample runs just past them.
        int Key(string key) => yaml.Split('\n').Where(l => l.StartsWith(key + ":")).Select(l => int.Parse(l[(key.Length + 1)..].Split('#')[0])).FirstOrDefault();
        // Samples run more than once here (the fusion test retrains two of them): each run replaces the last.
        File.WriteAllText(file, yaml + $"\nmax_steps: {Key("adalora_tinit") + Key("adalora_tfinal") + 2}\noverwrite_output_dir: true\n");
        var (code, _, err) = CliRunner.Run("train", file, "--json");
        Assert.True(code == 0, $"{name}: exit {code}: {err}");
        var outDir = Path.Combine(root, "samples-output", name);
        var log = File.ReadAllLines(Path.Combine(outDir, "trainer_log.jsonl")).Select(l => JsonNode.Parse(l)!).Where(n => n["loss"] is not null).ToList();
        Assert.NotEmpty(log);
        Assert.All(log, n => Assert.True(double.IsFinite(n["loss"]!.GetValue<double>()), $"{name}: {n}"));
        return outDir;
    }

    [Theory]
    [MemberData(nameof(Samples))]
    public void Sample_trains_from_its_yaml(string name)
    {
        var outDir = Train(name);
        var saved = Directory.GetFiles(outDir, "*.safetensors").Concat(Directory.GetFiles(outDir, "*.json")).Select(Path.GetFileName).ToList();
        Assert.True(saved.Any(f => f!.EndsWith(".safetensors")), $"{name}: no weights saved in {outDir}: {string.Join(", ", saved)}");
    }

    [Fact]
    public void Adapter_fusion_sample_fuses_the_two_adapter_samples()
    {
        Train("adapter_seq_bn");
        Train("adapter_houlsby");
        var outDir = Train("adapter_fusion");
        Assert.True(Directory.EnumerateFiles(outDir, "*fusion*", SearchOption.AllDirectories).Any(), $"no fusion files in {outDir}");
    }
}
