using System.Diagnostics;
using CsCheck;
using PeftSharp.Models;

namespace PeftSharp.Tests.Fuzz;

/// <summary>
/// kill -9 of every folder writer at random instants (the built `peft` CLI as a child process): the output folder is
/// always the old complete one or the new complete one, and the next run leaves no temporary sibling behind.
/// </summary>
public class KillTests
{
    static readonly string Peft = Path.Combine(AppContext.BaseDirectory, "peft");

    static (int Code, long Ms) RunChild(string[] args, int? killAfterMs)
    {
        var psi = new ProcessStartInfo(Peft) { RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (var a in args) psi.ArgumentList.Add(a);
        var sw = Stopwatch.StartNew();
        using var p = Process.Start(psi)!;
        p.StandardOutput.ReadToEndAsync();
        p.StandardError.ReadToEndAsync();
        if (killAfterMs is { } ms && !p.WaitForExit(ms)) p.Kill(entireProcessTree: true); // SIGKILL
        if (!p.WaitForExit(120_000)) { p.Kill(true); throw new TimeoutException($"peft {string.Join(' ', args)} did not finish"); }
        return (p.ExitCode, sw.ElapsedMilliseconds);
    }

    static void CopyDir(string from, string to)
    {
        Directory.CreateDirectory(to);
        foreach (var f in Directory.GetFiles(from)) File.Copy(f, Path.Combine(to, Path.GetFileName(f)));
    }

    /// <summary>The old folder (marked) loads whole, or the new one (unmarked) loads whole.</summary>
    static bool IsOld(string dir, Action<string> checkNew)
    {
        Assert.True(Directory.Exists(dir), $"{dir} vanished");
        if (File.Exists(Path.Combine(dir, "OLD")))
        {
            using var m = AutoModel.FromPretrained(dir);
            return true;
        }
        checkNew(dir);
        return false;
    }

    static void KillAtRandomInstants(string name, Func<string, string[]> command, Action<string> prepareOld, Action<string> checkNew, int kills)
    {
        var root = TestPaths.TempDir();
        var outDir = Path.Combine(root, "out");
        prepareOld(outDir);
        var (code, fullMs) = RunChild(command(outDir), null);
        Assert.Equal(0, code);
        Assert.False(IsOld(outDir, checkNew));
        int sawOld = 0, sawNew = 0;
        Gen.Int[0, 1000].Sample(permille =>
        {
            Directory.Delete(outDir, true);
            prepareOld(outDir);
            // Start-up (runtime, libtorch) takes most of a run: aim the kills at its second half, where the writing is.
            RunChild(command(outDir), (int)(fullMs * (0.3 + 0.9 * permille / 1000.0)));
            if (IsOld(outDir, checkNew)) sawOld++; else sawNew++;
        }, iter: kills, threads: 1);
        // The next complete run recovers whatever the killed ones left.
        Assert.Equal(0, RunChild(command(outDir), null).Code);
        Assert.False(IsOld(outDir, checkNew));
        Assert.Empty(Directory.GetFileSystemEntries(root).Select(Path.GetFileName).Where(n => n!.Contains(".peft-")));
        File.WriteAllText(Path.Combine(Path.GetTempPath(), "peftsharp-fuzz", $"kill-{name}.json"),
            $"{{\"target\": \"kill -9 {name}\", \"cases\": {kills}, \"old_complete\": {sawOld}, \"new_complete\": {sawNew}, \"broken\": 0}}");
    }

    static void OldModel(string dir)
    {
        CopyDir(TestPaths.Model("llama-tiny"), dir);
        // A stale shard index as a sharded model would have: must not survive into the new folder.
        File.WriteAllText(Path.Combine(dir, "OLD"), "");
    }

    [Fact]
    public void Merge_killed_at_any_instant_leaves_the_old_or_the_new_model()
    {
        Directory.CreateDirectory(Path.Combine(Path.GetTempPath(), "peftsharp-fuzz"));
        KillAtRandomInstants("merge",
            o => ["merge", "--model", TestPaths.Model("llama-tiny"), "--adapter", TestPaths.Data("adapters", "llama-tiny", "lora_qv"), "--out", o],
            OldModel, dir => { using var m = AutoModel.FromPretrained(dir); }, kills: 6);
    }

    [Fact]
    public void Quantize_killed_at_any_instant_leaves_the_old_or_the_new_model()
    {
        Directory.CreateDirectory(Path.Combine(Path.GetTempPath(), "peftsharp-fuzz"));
        KillAtRandomInstants("quantize",
            o => ["quantize", "--model", TestPaths.Model("llama-tiny"), "--out", o],
            OldModel, dir =>
            {
                Assert.Contains("quantization_config", File.ReadAllText(Path.Combine(dir, "config.json")));
                using var m = AutoModel.FromPretrained(dir);
            }, kills: 6);
    }

    [Fact]
    public void Training_killed_at_any_instant_keeps_its_final_adapter_and_checkpoints_whole()
    {
        Directory.CreateDirectory(Path.Combine(Path.GetTempPath(), "peftsharp-fuzz"));
        var work = TestPaths.TempDir();
        var data = Path.Combine(work, "data.jsonl");
        File.WriteAllLines(data, Enumerable.Range(0, 8).Select(i => $"{{\"input_ids\": [1, {i + 2}, {i + 3}, {i + 4}, 5]}}"));
        string Yaml(string outDir)
        {
            var yaml = Path.Combine(work, "run.yaml");
            File.WriteAllText(yaml, $"""
                model_name_or_path: {TestPaths.Model("llama-tiny")}
                finetuning_type: lora
                lora_target: q_proj,v_proj
                dataset: {data}
                max_steps: 6
                save_steps: 2
                per_device_train_batch_size: 2
                logging_steps: 1
                overwrite_output_dir: true
                output_dir: {outDir}
                """);
            return yaml;
        }
        void OldAdapter(string dir) => CopyDir(TestPaths.Data("adapters", "llama-tiny", "lora_qv"), dir);
        var root = TestPaths.TempDir();
        var outDir = Path.Combine(root, "out");
        var (code, fullMs) = RunChild(["train", Yaml(outDir)], null);
        Assert.Equal(0, code);
        int kills = 6, whole = 0;
        Gen.Int[0, 1000].Sample(permille =>
        {
            Directory.Delete(outDir, true);
            OldAdapter(outDir);
            RunChild(["train", Yaml(outDir)], (int)(fullMs * (0.3 + 0.9 * permille / 1000.0)));
            // The adapter files at the top are one save or the other, never a mix; every checkpoint-N present is complete.
            Assert.True(File.Exists(Path.Combine(outDir, "adapter_config.json")) && File.Exists(Path.Combine(outDir, "adapter_model.safetensors")));
            foreach (var cp in Directory.GetDirectories(outDir, "checkpoint-*"))
                Assert.True(File.Exists(Path.Combine(cp, "trainer_state.json")), $"{cp} is incomplete");
            using (var m = AutoModel.FromPretrained(TestPaths.Model("llama-tiny")))
                PeftSharp.Tuners.PeftModel.FromPretrained(m, outDir);
            whole++;
        }, iter: kills, threads: 1);
        Assert.Equal(0, RunChild(["train", Yaml(outDir)], null).Code);
        Assert.Empty(Directory.GetFileSystemEntries(root).Concat(Directory.GetFileSystemEntries(outDir)).Select(Path.GetFileName).Where(n => n!.Contains(".peft-")));
        File.WriteAllText(Path.Combine(Path.GetTempPath(), "peftsharp-fuzz", "kill-train.json"),
            $"{{\"target\": \"kill -9 train\", \"cases\": {kills}, \"whole\": {whole}, \"broken\": 0}}");
    }
}
