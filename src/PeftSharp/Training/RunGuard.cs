using System.Text.Json;
using System.Text.Json.Nodes;
using PeftSharp.IO;
using static TorchSharp.torch;

namespace PeftSharp.Training;

/// <summary>
/// Keeps training runs apart: a new run refuses an output_dir that holds another run's checkpoints (unless
/// overwrite_output_dir clears it, or resume_from_checkpoint continues it), and a checkpoint is resumed only when its
/// trainer_state.json is well-formed and it trains the same parameters with the same shapes (method, targets, rank,
/// model) as the run.
/// </summary>
public static class RunGuard
{
    const string StateFile = "trainer_state.json";

    /// <summary>Called before a run writes anything to its output_dir.</summary>
    public static void PrepareOutputDir(TrainingArguments args)
    {
        var dir = args.OutputDir;
        // A killed earlier run may have left half-written folders: the final save's and the checkpoints'.
        AtomicFolder.Recover(dir, TrainerOutputs.KeepOnFinalSave(dir));
        if (!Directory.Exists(dir)) return;
        AtomicFolder.CleanStale(dir);
        bool resuming = args.ResumeFromCheckpoint is { Length: > 0 } r && r != "false";
        var checkpoints = Directory.EnumerateDirectories(dir, "checkpoint-*").Select(Path.GetFileName).Order(StringComparer.Ordinal).ToList();
        if (checkpoints.Count == 0 || resuming) return;
        if (!args.OverwriteOutputDir)
            throw new PeftOutputException($"output_dir '{dir}' already holds checkpoints of an earlier run ({string.Join(", ", checkpoints.Take(3))}" +
                $"{(checkpoints.Count > 3 ? ", ..." : "")}); set overwrite_output_dir: true to clear it, resume_from_checkpoint to continue that run, or choose another output_dir");
        AtomicFolder.Write(dir, _ => { }); // cleared in one swap: a kill never leaves half of the old run
    }

    /// <summary>What a checkpoint records about the run that wrote it: its trainable parameters' names and shapes, and the model.</summary>
    public static JsonObject Fingerprint(IEnumerable<(string Name, long[] Shape)> trainable, Models.ModelConfig model) => new()
    {
        ["trainable"] = new JsonObject(trainable.Select(p => KeyValuePair.Create(p.Name, (JsonNode?)new JsonArray(p.Shape.Select(d => (JsonNode)d).ToArray())))),
        ["model"] = new JsonObject
        {
            ["model_type"] = model.ModelType, ["hidden_size"] = model.HiddenSize,
            ["num_hidden_layers"] = model.NumHiddenLayers, ["vocab_size"] = model.VocabSize,
        },
    };

    /// <summary>Refuses a checkpoint written by a different run, naming the first differences.</summary>
    public static void CheckSameRun(string statePath, JsonObject state, JsonObject now)
    {
        if (state["run"] is not JsonObject then) return; // written before checkpoints recorded their run
        var problems = new List<string>();
        if (then["model"] is JsonObject tm && now["model"] is JsonObject nm)
            foreach (var (k, v) in nm)
                if (tm[k]?.ToJsonString() is { } old && old != v?.ToJsonString())
                    problems.Add($"model {k} was {old}, is {v?.ToJsonString()} now");
        var thenParams = (then["trainable"] as JsonObject)?.ToDictionary(kv => kv.Key, kv => kv.Value?.ToJsonString()) ?? new();
        var nowParams = ((JsonObject)now["trainable"]!).ToDictionary(kv => kv.Key, kv => kv.Value?.ToJsonString());
        var onlyThen = thenParams.Keys.Except(nowParams.Keys).ToList();
        var onlyNow = nowParams.Keys.Except(thenParams.Keys).ToList();
        if (onlyNow.Count > 0) problems.Add($"the run trains {onlyNow.Count} parameter(s) the checkpoint lacks (e.g. {onlyNow[0]}): a different method or target modules");
        if (onlyThen.Count > 0) problems.Add($"the checkpoint trains {onlyThen.Count} parameter(s) the run lacks (e.g. {onlyThen[0]}): a different method or target modules");
        foreach (var k in nowParams.Keys.Intersect(thenParams.Keys).Where(k => nowParams[k] != thenParams[k]).Take(3))
            problems.Add($"{k} has shape {thenParams[k]} in the checkpoint but {nowParams[k]} in the run (a different rank or model size)");
        if (problems.Count > 0)
            throw new PeftOutputException($"{statePath}: this checkpoint belongs to a different run: {string.Join("; ", problems)}");
    }

    /// <summary>trainer_state.json parsed and checked: every key present, of the right type and in range (1-based line on a JSON error).</summary>
    public static JsonObject ReadState(string dir, long totalSteps)
    {
        var path = Path.Combine(dir, StateFile);
        if (!File.Exists(path)) throw new PeftFormatException(dir, $"not a trainer checkpoint (no {StateFile})");
        JsonObject state;
        try
        {
            state = JsonNode.Parse(File.ReadAllText(path)) as JsonObject ?? throw new PeftFormatException(path, "expected a JSON object");
        }
        catch (JsonException e) { throw new PeftFormatException(path, (e.LineNumber ?? 0) + 1, $"not valid JSON ({e.Message})"); }
        long Int(string key, long min, long max)
        {
            var v = state[key];
            if (v is not JsonValue jv || jv.GetValueKind() != JsonValueKind.Number || !jv.TryGetValue<long>(out var n))
                throw new PeftFormatException(path, $"'{key}' must be an integer (found {v?.ToJsonString() ?? "nothing"})");
            if (n < min || n > max) throw new PeftFormatException(path, $"'{key}' is {n}; expected {min}..{max}");
            return n;
        }
        var total = Int("total_steps", 1, int.MaxValue);
        Int("global_step", 0, total);
        if (total != totalSteps)
            throw new PeftFormatException(path, $"'total_steps' is {total} but this run has {totalSteps} steps; resuming would not continue the same schedule");
        Int("steps_per_epoch", 1, int.MaxValue);
        Int("seed", long.MinValue, long.MaxValue);
        Int("per_device_train_batch_size", 1, int.MaxValue);
        Int("gradient_accumulation_steps", 1, int.MaxValue);
        Int("train_rows", 1, int.MaxValue);
        Int("pending_steps", 0, int.MaxValue);
        if (state["pending_loss"] is not JsonValue pl || pl.GetValueKind() != JsonValueKind.Number)
            throw new PeftFormatException(path, "'pending_loss' must be a number");
        if (state["log_history"] is not JsonArray history || history.Any(e => e is not JsonObject))
            throw new PeftFormatException(path, "'log_history' must be a list of objects");
        return state;
    }
}
