using System.Diagnostics;
using PeftSharp.Tests.Tokenization;
using PeftSharp.Training.Distributed;

namespace PeftSharp.Tests.Training;

/// <summary>A rank started without a usable Open MPI gets one line saying what to install (no MPI needed to test it).</summary>
public class MpiLoadTests
{
    const string Missing = "libpeftsharp-no-such-mpi.so.40";

    [Fact]
    public void A_missing_libmpi_is_one_line_naming_it_and_the_setup_step()
    {
        var e = Assert.Throws<PeftPlatformException>(() => OpenMpi.Load(Missing));
        Assert.Contains(Missing, e.Message);
        Assert.Contains("scripts/setup.sh --mpi", e.Message);
        Assert.DoesNotContain('\n', e.Message);
    }

    [Fact]
    public void A_library_that_is_not_open_mpi_is_named_instead_of_crashing()
    {
        if (!OperatingSystem.IsLinux()) return;
        var e = Assert.Throws<PeftPlatformException>(() => OpenMpi.Load("libc.so.6"));
        Assert.Contains("libc.so.6", e.Message);
        Assert.Contains("not Open MPI", e.Message);
        Assert.Contains("scripts/setup.sh --mpi", e.Message);
    }

    [Fact]
    public void Peft_train_as_a_rank_without_libmpi_exits_1_with_one_error_line()
    {
        var dir = TestPaths.TempDir();
        File.WriteAllLines(Path.Combine(dir, "data.jsonl"), Enumerable.Range(0, 4).Select(i => $"{{\"instruction\":\"count {i}\",\"output\":\"{i} {i + 1}\"}}"));
        var yaml = Path.Combine(dir, "run.yaml");
        File.WriteAllText(yaml, $"""
            model_name_or_path: {TinyTokenizer.ModelWithTokenizer("llama-tiny")}
            finetuning_type: lora
            dataset: data.jsonl
            template: alpaca
            max_steps: 1
            output_dir: {Path.Combine(dir, "out")}
            """);
        var psi = new ProcessStartInfo("dotnet") { RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (var a in new[] { Path.Combine(AppContext.BaseDirectory, "peft.dll"), "train", yaml }) psi.ArgumentList.Add(a);
        // What mpirun sets for rank 0 of 2, with the library pointed at one that does not exist.
        psi.Environment["OMPI_COMM_WORLD_SIZE"] = "2";
        psi.Environment["OMPI_COMM_WORLD_RANK"] = "0";
        psi.Environment["OMPI_COMM_WORLD_LOCAL_RANK"] = "0";
        psi.Environment[OpenMpi.LibraryVariable] = Missing;
        using var p = Process.Start(psi)!;
        var stdout = PipeDrain.Start(p.StandardOutput);
        var stderr = PipeDrain.Start(p.StandardError);
        if (!p.WaitForExit(600_000)) { p.Kill(); Assert.Fail("peft train did not end within 10 minutes"); }
        var errors = stderr.Result.Split('\n', StringSplitOptions.RemoveEmptyEntries).Where(l => l.StartsWith("error:")).ToList();
        Assert.True(p.ExitCode == 1, $"exit {p.ExitCode}: {stdout.Result} {stderr.Result}");
        var line = Assert.Single(errors);
        Assert.Contains(Missing, line);
        Assert.Contains("scripts/setup.sh --mpi", line);
        Assert.Empty(Directory.Exists(Path.Combine(dir, "out")) ? Directory.GetDirectories(Path.Combine(dir, "out"), "checkpoint-*") : []);
    }
}
