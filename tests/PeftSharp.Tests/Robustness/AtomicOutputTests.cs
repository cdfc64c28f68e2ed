using System.Text.Json.Nodes;
using PeftSharp.IO;
using PeftSharp.Tests.Cli;
using PeftSharp.Tests.Training;
using PeftSharp.Training;

namespace PeftSharp.Tests.Robustness;

/// <summary>Folder-level atomic outputs and the output_dir rules of training runs.</summary>
public class AtomicOutputTests
{
    static string[] Entries(string dir) => Directory.EnumerateFileSystemEntries(dir).Select(Path.GetFileName).Order(StringComparer.Ordinal).ToArray()!;

    [Fact]
    public void Replacing_a_folder_leaves_nothing_of_the_old_one_and_no_temporary_sibling()
    {
        var parent = TestPaths.TempDir();
        var dir = Path.Combine(parent, "out");
        Directory.CreateDirectory(dir);
        File.WriteAllText(Path.Combine(dir, "model.safetensors.index.json"), "{}");
        File.WriteAllText(Path.Combine(dir, "model-00001-of-00002.safetensors"), "old");
        AtomicFolder.Write(dir, tmp => File.WriteAllText(Path.Combine(tmp, "config.json"), "new"));
        Assert.Equal(new[] { "config.json" }, Entries(dir));
        Assert.Equal(new[] { "out" }, Entries(parent));
    }

    [Fact]
    public void A_failing_writer_leaves_the_old_folder_whole()
    {
        var parent = TestPaths.TempDir();
        var dir = Path.Combine(parent, "out");
        Directory.CreateDirectory(dir);
        File.WriteAllText(Path.Combine(dir, "config.json"), "old");
        Assert.Throws<IOException>(() => AtomicFolder.Write(dir, tmp =>
        {
            File.WriteAllText(Path.Combine(tmp, "config.json"), "half");
            throw new IOException("disk full");
        }));
        Assert.Equal("old", File.ReadAllText(Path.Combine(dir, "config.json")));
        Assert.Equal(new[] { "out" }, Entries(parent));
    }

    [Fact]
    public void Kept_entries_survive_and_the_writers_own_entries_win()
    {
        var dir = Path.Combine(TestPaths.TempDir(), "run");
        Directory.CreateDirectory(Path.Combine(dir, "checkpoint-2"));
        File.WriteAllText(Path.Combine(dir, "trainer_log.jsonl"), "log");
        File.WriteAllText(Path.Combine(dir, "adapter_model.bin"), "stale");
        AtomicFolder.Write(dir, tmp => File.WriteAllText(Path.Combine(tmp, "adapter_config.json"), "{}"), TrainerOutputs.KeepOnFinalSave(dir));
        Assert.Equal(new[] { "adapter_config.json", "checkpoint-2", "trainer_log.jsonl" }, Entries(dir));
    }

    [Fact]
    public void Leftovers_of_a_killed_writer_are_cleaned_and_a_folder_moved_aside_comes_back()
    {
        var parent = TestPaths.TempDir();
        var dir = Path.Combine(parent, "out");
        // A dead writer's unfinished folder (pid 2^22+1 is above Linux's pid_max default).
        Directory.CreateDirectory(Path.Combine(parent, ".out.peft-tmp-4194305-abc"));
        // A kill between the fallback's two renames: the old folder is aside and the folder itself is missing.
        Directory.CreateDirectory(Path.Combine(parent, ".out.peft-old-4194305-abc"));
        File.WriteAllText(Path.Combine(parent, ".out.peft-old-4194305-abc", "config.json"), "old");
        AtomicFolder.Recover(dir);
        Assert.Equal("old", File.ReadAllText(Path.Combine(dir, "config.json")));
        Assert.Equal(new[] { "out" }, Entries(parent));
    }

    [Fact]
    public void Merge_into_a_folder_holding_a_sharded_model_drops_the_old_index()
    {
        var outDir = Path.Combine(TestPaths.TempDir(), "merged");
        Directory.CreateDirectory(outDir);
        File.WriteAllText(Path.Combine(outDir, "model.safetensors.index.json"), """{"weight_map": {"lm_head.weight": "model-00002-of-00002.safetensors"}}""");
        File.WriteAllText(Path.Combine(outDir, "model-00002-of-00002.safetensors"), "old shard");
        var (code, _, err) = CliRunner.Run("merge", "--model", TestPaths.Model("llama-tiny"), "--adapter", TestPaths.Data("adapters", "llama-tiny", "lora_qv"), "--out", outDir);
        Assert.True(code == 0, err);
        Assert.Contains("model.safetensors", Entries(outDir));
        Assert.DoesNotContain("model-00002-of-00002.safetensors", Entries(outDir));
        Assert.False(File.Exists(Path.Combine(outDir, "model.safetensors.index.json")));
        using var m = PeftSharp.Models.AutoModel.FromPretrained(outDir);
    }

    static TrainingArguments Args(string dir) => new()
    {
        OutputDir = dir, LearningRate = 5e-3, MaxSteps = 2, PerDeviceTrainBatchSize = 2, LoggingSteps = 1, SaveSteps = 1, Seed = 11,
    };

    [Fact]
    public void A_new_run_refuses_an_output_dir_with_another_runs_checkpoints_unless_told_to_overwrite()
    {
        var dir = TestPaths.TempDir();
        using (var m = TrainerTests.TinyLlama()) TrainerTests.Run(TrainingTarget.Full(m), Args(dir), TrainerTests.Rows(4));
        Assert.True(Directory.Exists(Path.Combine(dir, "checkpoint-2")));
        using (var m = TrainerTests.TinyLlama())
        {
            var e = Assert.Throws<PeftOutputException>(() => TrainerTests.Run(TrainingTarget.Full(m), Args(dir), TrainerTests.Rows(4)));
            Assert.Contains("already holds checkpoints of an earlier run (checkpoint-1, checkpoint-2)", e.Message);
            Assert.Contains("overwrite_output_dir", e.Message);
        }
        File.WriteAllText(Path.Combine(dir, "stale.txt"), "x");
        using (var m = TrainerTests.TinyLlama()) TrainerTests.Run(TrainingTarget.Full(m), Args(dir) with { OverwriteOutputDir = true }, TrainerTests.Rows(4));
        Assert.False(File.Exists(Path.Combine(dir, "stale.txt")));
        Assert.True(Directory.Exists(Path.Combine(dir, "checkpoint-2")));
    }

    [Fact]
    public void Resuming_a_checkpoint_of_a_different_run_names_the_mismatch()
    {
        var dir = TestPaths.TempDir();
        using (var m = TrainerTests.TinyLlama()) TrainerTests.Run(TrainingTarget.Full(m), Args(dir) with { MaxSteps = 4 }, TrainerTests.Rows(4), stopAfter: 2);
        using var bigger = TrainerTests.TinyLlama(hidden: 64);
        var e = Assert.Throws<PeftOutputException>(() =>
            TrainerTests.Run(TrainingTarget.Full(bigger), Args(dir) with { MaxSteps = 4, ResumeFromCheckpoint = "last" }, TrainerTests.Rows(4)));
        Assert.Contains("belongs to a different run", e.Message);
        Assert.Contains("model hidden_size was 32, is 64 now", e.Message);
    }

    [Theory]
    [InlineData("global_step", "1000000", "'global_step' is 1000000; expected 0..4")]
    [InlineData("global_step", "\"two\"", "'global_step' must be an integer (found \"two\")")]
    [InlineData("log_history", "null", "'log_history' must be a list of objects")]
    [InlineData("seed", null, "'seed' must be an integer (found nothing)")]
    public void Trainer_state_is_validated_with_the_key_named(string key, string? json, string expected)
    {
        var dir = TestPaths.TempDir();
        using (var m = TrainerTests.TinyLlama()) TrainerTests.Run(TrainingTarget.Full(m), Args(dir) with { MaxSteps = 4 }, TrainerTests.Rows(4), stopAfter: 2);
        var path = Path.Combine(dir, "checkpoint-2", "trainer_state.json");
        var state = JsonNode.Parse(File.ReadAllText(path))!.AsObject();
        if (json is null) state.Remove(key); else state[key] = JsonNode.Parse(json);
        File.WriteAllText(path, state.ToJsonString());
        using var m2 = TrainerTests.TinyLlama();
        var e = Assert.Throws<PeftFormatException>(() =>
            TrainerTests.Run(TrainingTarget.Full(m2), Args(dir) with { MaxSteps = 4, ResumeFromCheckpoint = "last" }, TrainerTests.Rows(4)));
        Assert.Contains(path, e.Message);
        Assert.Contains(expected, e.Message);
    }
}
