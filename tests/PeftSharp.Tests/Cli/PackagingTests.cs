using System.Diagnostics;
using System.IO.Compression;
using System.Runtime.InteropServices;
using System.Xml.Linq;

namespace PeftSharp.Tests.Cli;

/// <summary>
/// What `dotnet pack -c Release -o artifacts` ships: the library packages carry their metadata and XML docs,
/// and the peft tool installs into a fresh tool path and runs with its own libtorch (TorchSharp-cpu).
/// </summary>
public class PackagingTests
{
    internal static (int Code, string Output) Dotnet(string workDir, IDictionary<string, string>? env, params string[] args)
    {
        var psi = new ProcessStartInfo("dotnet") { WorkingDirectory = workDir, RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (var a in args) psi.ArgumentList.Add(a);
        psi.Environment["DOTNET_CLI_TELEMETRY_OPTOUT"] = "1";
        psi.Environment["DOTNET_NOLOGO"] = "1";
        foreach (var (k, v) in env ?? new Dictionary<string, string>()) psi.Environment[k] = v;
        return RunProcess(psi);
    }

    static (int Code, string Output) RunProcess(ProcessStartInfo psi)
    {
        using var p = Process.Start(psi)!;
        var err = p.StandardError.ReadToEndAsync();
        var output = p.StandardOutput.ReadToEnd();
        p.WaitForExit();
        return (p.ExitCode, output + err.Result);
    }

    internal static string RepoRoot => Path.GetDirectoryName(TestPaths.RepoFile("PeftSharp.sln"))!;

    [Fact]
    public void The_library_package_carries_licence_readme_repository_and_xml_docs()
    {
        var outDir = TestPaths.TempDir();
        var (code, output) = Dotnet(RepoRoot, null, "pack", "src/PeftSharp", "-c", "Release", "-o", outDir, "-nodeReuse:false");
        Assert.True(code == 0, output);
        using var zip = ZipFile.OpenRead(Path.Combine(outDir, "PeftSharp.0.1.0.nupkg"));
        var names = zip.Entries.Select(e => e.FullName).ToHashSet();
        Assert.Contains("lib/net10.0/PeftSharp.dll", names);
        Assert.Contains("lib/net10.0/PeftSharp.xml", names);
        Assert.Contains("README.md", names);
        Assert.Contains("LICENSE", names);
        using var nuspecStream = zip.Entries.Single(e => e.FullName == "PeftSharp.nuspec").Open();
        var meta = XDocument.Load(nuspecStream).Root!.Elements().Single(e => e.Name.LocalName == "metadata");
        string Get(string name) => meta.Elements().Single(e => e.Name.LocalName == name).Value;
        Assert.Equal("MIT", Get("license"));
        Assert.Equal("README.md", Get("readme"));
        Assert.False(string.IsNullOrWhiteSpace(Get("description")));
        var repo = meta.Elements().Single(e => e.Name.LocalName == "repository");
        Assert.StartsWith("https://github.com/", repo.Attribute("url")!.Value);
        Assert.Equal(40, repo.Attribute("commit")!.Value.Length); // SourceLink's commit
        Assert.Contains(meta.Descendants(), e => e.Name.LocalName == "dependency" && e.Attribute("id")!.Value == "TorchSharp");
    }

    /// <summary>Packing the tool compresses ~460 MB of libtorch (about a minute on 2 idle cores, more when busy); CI runs
    /// it, and PEFTSHARP_TOOL_TEST=0 skips it for a quicker local run.</summary>
    public sealed class ToolFactAttribute : FactAttribute
    {
        public ToolFactAttribute()
        {
            if (Environment.GetEnvironmentVariable("PEFTSHARP_TOOL_TEST") == "0")
                Skip = "PEFTSHARP_TOOL_TEST=0 skips packing and installing the peft tool";
            else if (!OperatingSystem.IsLinux() || RuntimeInformation.ProcessArchitecture != Architecture.X64)
                Skip = "the tool test packs the linux-x64 tool package";
        }
    }

    [ToolFact]
    public void The_peft_tool_installs_into_a_fresh_tool_path_and_runs_on_its_own_libtorch()
    {
        var dir = TestPaths.TempDir();
        try { PackInstallAndRun(dir); }
        finally { TestPaths.TryDelete(dir); } // ~1 GB of packed and installed libtorch
    }

    static void PackInstallAndRun(string dir)
    {
        var artifacts = Path.Combine(dir, "artifacts");
        var (code, output) = Dotnet(RepoRoot, null, "pack", "src/PeftSharp.Cli", "-c", "Release", "-o", artifacts,
            "-p:ToolPackageRuntimeIdentifiers=linux-x64", "-nodeReuse:false");
        Assert.True(code == 0, output);
        Assert.True(File.Exists(Path.Combine(artifacts, "PeftSharp.Cli.0.1.0.nupkg")), output);
        Assert.True(File.Exists(Path.Combine(artifacts, "PeftSharp.Cli.linux-x64.0.1.0.nupkg")), output);

        // A private package folder: the user-wide cache may hold an older build of the same version.
        var env = new Dictionary<string, string> { ["NUGET_PACKAGES"] = Path.Combine(dir, "packages") };
        var tools = Path.Combine(dir, "tools");
        (code, output) = Dotnet(dir, env, "tool", "install", "--tool-path", tools, "--add-source", artifacts, "PeftSharp.Cli");
        Assert.True(code == 0, output);

        var peft = Path.Combine(tools, "peft");
        var help = RunProcess(new ProcessStartInfo(peft, "--help") { RedirectStandardOutput = true, RedirectStandardError = true, WorkingDirectory = dir });
        Assert.True(help.Code == 0, help.Output);
        foreach (var command in new[] { "quickstart", "train", "chat", "serve" }) Assert.Contains(command, help.Output);

        // info loads the model through libtorch: the tool found its native backend.
        var psi = new ProcessStartInfo(peft) { RedirectStandardOutput = true, RedirectStandardError = true, WorkingDirectory = dir };
        foreach (var a in new[] { "info", "--model", TestPaths.Model("llama-tiny") }) psi.ArgumentList.Add(a);
        var info = RunProcess(psi);
        Assert.True(info.Code == 0, info.Output);
        Assert.Contains("LlamaForCausalLM", info.Output);
        Assert.Contains("loaded Float32", info.Output);
    }
}
