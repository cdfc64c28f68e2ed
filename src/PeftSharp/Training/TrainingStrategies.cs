using System.Text.Json.Nodes;

namespace PeftSharp.Training;

/// <summary>
/// HF Trainer's interval logic: when to evaluate (eval_strategy, eval_steps, eval_delay, eval_on_start) and save
/// (save_strategy, save_steps), and which checkpoint is best (metric_for_best_model, greater_is_better) for
/// load_best_model_at_end and save_strategy best.
/// </summary>
public sealed class TrainingStrategies
{
    readonly TrainingArguments _args;
    readonly int _stepsPerEpoch, _totalSteps;

    public TrainingStrategies(TrainingArguments args, int stepsPerEpoch, int totalSteps)
    {
        _args = args; _stepsPerEpoch = stepsPerEpoch; _totalSteps = totalSteps;
    }

    public static void Validate(TrainingArguments a)
    {
        if (!a.LoadBestModelAtEnd) return;
        if (a.EvalStrategy == "no")
            throw new PeftConfigException("load_best_model_at_end needs an eval_strategy (steps or epoch) so there is something to compare");
        if (a.SaveStrategy != "best" && a.SaveStrategy != a.EvalStrategy)
            throw new PeftConfigException($"load_best_model_at_end needs save_strategy to match eval_strategy (save_strategy is {a.SaveStrategy}, eval_strategy is {a.EvalStrategy}) or be best");
        if (a.SaveStrategy == "steps" && (a.SaveSteps <= 0 || a.SaveSteps % EvalEvery(a) != 0))
            throw new PeftConfigException($"load_best_model_at_end needs save_steps ({a.SaveSteps}) to be a multiple of eval_steps ({EvalEvery(a)})");
    }

    static int EvalEvery(TrainingArguments a) => a.EvalSteps > 0 ? a.EvalSteps : a.LoggingSteps;

    /// <summary>The metric compared for the best checkpoint (HF: "loss" → eval_loss), or null when not tracking.</summary>
    public string? Metric => _args.MetricForBestModel is { } m ? (m.StartsWith("eval_", StringComparison.Ordinal) ? m : "eval_" + m)
        : _args.LoadBestModelAtEnd || _args.SaveStrategy == "best" ? "eval_loss" : null;

    bool GreaterIsBetter => _args.GreaterIsBetter ?? !(Metric ?? "eval_loss").EndsWith("loss", StringComparison.Ordinal);

    public double? BestMetric { get; private set; }
    public int? BestStep { get; private set; }
    public string? BestCheckpoint { get; private set; }

    /// <summary>Evaluate after optimizer step <paramref name="step"/> (the final evaluation is separate).</summary>
    public bool EvalAfter(int step)
    {
        if (step >= _totalSteps || step < _args.EvalDelay) return false;
        return _args.EvalStrategy switch
        {
            "steps" => step % EvalEvery(_args) == 0,
            "epoch" => step % _stepsPerEpoch == 0,
            // Before eval_strategy existed here, eval_steps alone meant periodic evaluation; keep that.
            _ => _args.EvalSteps > 0 && step % _args.EvalSteps == 0,
        };
    }

    /// <summary>Save a checkpoint after <paramref name="step"/>; <paramref name="improved"/> is whether this step's evaluation set a new best.</summary>
    public bool SaveAfter(int step, bool improved) => step < _totalSteps && _args.SaveStrategy switch
    {
        "steps" => _args.SaveSteps > 0 && step % _args.SaveSteps == 0,
        "epoch" => step % _stepsPerEpoch == 0,
        "best" => improved,
        _ => false,
    };

    /// <summary>Whether the run ends with a checkpoint-N folder (HF saves at the end under steps and epoch strategies).</summary>
    public bool SaveAtEnd(bool improved) => _args.SaveStrategy switch
    {
        "steps" => _args.SaveSteps > 0,
        "epoch" => true,
        "best" => improved,
        _ => false,
    };

    /// <summary>Records an evaluation; true when it is the best so far.</summary>
    public bool Record(int step, JsonObject eval)
    {
        if (Metric is not { } m) return false;
        if (eval[m] is not JsonValue v) throw new PeftConfigException($"metric_for_best_model: the evaluation has no '{m}' (it has {string.Join(", ", eval.Select(p => p.Key))})");
        double value = v.GetValue<double>();
        bool better = BestMetric is not { } best || (GreaterIsBetter ? value > best : value < best);
        if (better) { BestMetric = value; BestStep = step; }
        return better;
    }

    /// <summary>Called after a checkpoint of <paramref name="step"/> was written.</summary>
    public void Saved(int step, string dir)
    {
        if (BestStep == step) BestCheckpoint = dir;
    }

    /// <summary>Restores HF's fields from a checkpoint's trainer_state.json (<paramref name="path"/>, for messages); null fields mean none yet.</summary>
    public void Restore(JsonObject state, string path)
    {
        T? Field<T>(string key) where T : struct =>
            state[key] switch
            {
                null => null,
                JsonValue v when v.TryGetValue<T>(out var x) => x,
                var other => throw new PeftFormatException(path, $"'{key}' must be {(typeof(T) == typeof(int) ? "an integer" : "a number")} or null (found {other.ToJsonString()})"),
            };
        BestMetric = Field<double>("best_metric");
        BestStep = Field<int>("best_global_step");
        BestCheckpoint = state["best_model_checkpoint"] switch
        {
            null => null,
            JsonValue v when v.TryGetValue<string>(out var c) => c,
            var other => throw new PeftFormatException(path, $"'best_model_checkpoint' must be a folder path or null (found {other.ToJsonString()})"),
        };
    }
}
