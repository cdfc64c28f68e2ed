using System.Diagnostics;
using System.Text.Json;
using System.Text.Json.Nodes;
using PeftSharp.IO;
using PeftSharp.Models;
using PeftSharp.Runtime;
using PeftSharp.Training.Data;
using PeftSharp.Training.Distributed;
using TorchSharp;
using static TorchSharp.torch;

namespace PeftSharp.Training;

/// <summary>What one optimizer step did (raised for every step, whatever logging_steps is).</summary>
public sealed record StepRecord(int Step, int TotalSteps, double Epoch, double Loss, double GradNorm, double LearningRate,
    IReadOnlyList<double> GroupLearningRates, long Tokens, TimeSpan Elapsed);

/// <summary>Loss, perplexity and (classification) accuracy over a dataset.</summary>
public sealed record EvalResult(double Loss, double Perplexity, double? Accuracy, int Rows);

public sealed record TrainResult(int GlobalStep, double TrainLoss, TimeSpan Elapsed, long Tokens, int ResumedFromStep);

/// <summary>
/// A training loop with HF Trainer's semantics: AdamW over the target's trainable parameters (HF's decay groups or
/// LoRA+), transformers' LR schedules, gradient accumulation with Trainer 4.57's token-count normalization,
/// max_grad_norm clipping (the pre-clip norm is reported), periodic logging/eval/checkpoints and exact resume.
/// It is not tied to any tuning method: whatever has requires_grad trains, and a target may bring the method's own
/// optimizer, per-step hooks (saved in checkpoints when resumable) and loss term (<see cref="TrainingTarget"/>).
/// </summary>
public sealed class Trainer : IDisposable
{
    readonly TrainingTarget _target;
    readonly TrainingArguments _args;
    readonly IReadOnlyList<TrainExample> _train;
    readonly IReadOnlyList<TrainExample>? _eval;
    readonly IOptimizer _optimizer;
    readonly List<JsonObject> _logHistory = new();
    readonly int _batchesPerEpoch;
    readonly TrainingStrategies _strategies;
    readonly IDisposable? _neftune;
    readonly IGradientSync? _sync;

    /// <param name="sync">Data parallelism; by default the MPI one when mpirun (or srun) started this process as one rank of several, else none.</param>
    public Trainer(TrainingTarget target, TrainingArguments args, IReadOnlyList<TrainExample> train, IReadOnlyList<TrainExample>? eval = null,
        IGradientSync? sync = null)
    {
        args.Validate();
        if (train.Count == 0) throw new PeftSharpException("the training set is empty");
        _target = target; _args = args; _train = train; _eval = eval is { Count: > 0 } ? eval : null;
        if (target.CreateOptimizer is not null && (args.LoraPlusLrRatio is not null || args.Optim != "adamw_torch"))
            throw new PeftConfigException($"this method brings its own optimizer; loraplus_lr_ratio and optim (here '{args.Optim}') cannot change it");
        if (target.CreateOptimizer is { } create) _optimizer = create(args);
        else
        {
            var groups = args.LoraPlusLrRatio is { } ratio
                ? OptimizerGroups.LoraPlus(target.Root, args.LearningRate, ratio, args.WeightDecay, args.LoraPlusLrEmbedding)
                : OptimizerGroups.Default(target.Root, args.LearningRate, args.WeightDecay);
            _optimizer = Optimizers.BnbAdamW.Create(args.Optim, groups, args.AdamBeta1, args.AdamBeta2, args.AdamEpsilon);
        }
        if (_optimizer.Groups.All(g => g.Params.Count == 0))
        {
            _optimizer.Dispose();
            throw new PeftSharpException("the model has no trainable parameters (nothing has requires_grad)");
        }
        if (args.Bf16)
        {
            Bf16Base.Apply(target.Root);
            // The float32 weights just replaced would otherwise stay resident (undisposed until a GC, then in glibc's
            // heap) beside their bfloat16 copies, and bf16 storage would raise the peak instead of lowering it.
            Runtime.TorchRuntime.CollectAndTrim();
        }
        if (args.GradientCheckpointing) GradientCheckpointing.Enable(target.Model);
        Callbacks.AddRange(target.Callbacks);
        _sync = sync ?? DataParallel.Current();
        (StepsPerEpoch, TotalSteps) = Schedule(args, train.Count, WorldSize);
        _batchesPerEpoch = (train.Count + GlobalMicroBatch - 1) / GlobalMicroBatch;
        WarmupSteps = args.WarmupStepsFor(TotalSteps);
        _strategies = new TrainingStrategies(args, StepsPerEpoch, TotalSteps);
        if (args.NeftuneNoiseAlpha is > 0 and var alpha) _neftune = Neftune.Attach(target.Model, alpha);
    }

    /// <summary>
    /// Optimizer steps per epoch and in the whole run for <paramref name="trainRows"/> rows (max_steps, else epochs × steps per epoch)
    /// when <paramref name="worldSize"/> ranks (by default as many as the launcher started) each take per_device_train_batch_size rows.
    /// </summary>
    public static (int StepsPerEpoch, int TotalSteps) Schedule(TrainingArguments args, int trainRows, int? worldSize = null)
    {
        int global = args.PerDeviceTrainBatchSize * (worldSize ?? DataParallel.WorldSize);
        int batches = (trainRows + global - 1) / global;
        int perEpoch = (batches + args.GradientAccumulationSteps - 1) / args.GradientAccumulationSteps;
        return (perEpoch, args.MaxSteps > 0 ? args.MaxSteps : (int)Math.Ceiling(args.NumTrainEpochs * perEpoch));
    }

    public int StepsPerEpoch { get; }
    public int TotalSteps { get; }
    public int WarmupSteps { get; }
    public int GlobalStep { get; private set; }
    /// <summary>Ranks training together (1 without data parallelism).</summary>
    public int WorldSize => _sync?.WorldSize ?? 1;
    /// <summary>Whether this process writes logs, evaluations, checkpoints and the result (rank 0, or the only process).</summary>
    public bool IsMainProcess => _sync?.IsMain ?? true;
    int GlobalMicroBatch => _args.PerDeviceTrainBatchSize * WorldSize;
    public IReadOnlyList<ParamGroup> ParamGroups => _optimizer.Groups;
    public IReadOnlyList<JsonObject> LogHistory => _logHistory;
    /// <summary>Eval/save intervals and the best checkpoint so far (load_best_model_at_end).</summary>
    public TrainingStrategies Strategies => _strategies;
    /// <summary>The checkpoint folder this run resumed from (null for a fresh run).</summary>
    public string? ResumedFrom { get; private set; }

    /// <summary>Raised after every optimizer step.</summary>
    public event Action<StepRecord>? StepCompleted;
    /// <summary>Raised for each entry written to trainer_log.jsonl (training logs every logging_steps, evaluations).</summary>
    public event Action<JsonObject>? Logged;
    /// <summary>Raised after backward of each optimizer step (1-based), before clipping: the gradients are the raw ones.</summary>
    public event Action<int>? GradientsComputed;
    /// <summary>Method hooks called after each optimizer step, before the gradients are zeroed (AdaLoRA's allocator, Delta-LoRA's W update).</summary>
    public List<ITrainingCallback> Callbacks { get; } = new();
    /// <summary>Raised after a checkpoint folder is complete.</summary>
    public event Action<string>? CheckpointSaved;

    // ---- data order: a pure function of (seed, epoch), so a resumed run sees the same batches ----

    int[] EpochOrder(int epoch)
    {
        if (!_args.Shuffle) return Enumerable.Range(0, _train.Count).ToArray();
        using var g = new Generator((ulong)(_args.Seed + epoch));
        using var perm = randperm(_train.Count, generator: g);
        return perm.data<long>().Select(i => (int)i).ToArray();
    }

    int[]? _orderCache; int _orderEpoch = -1;

    // Each global micro-batch is per_device_train_batch_size × ranks rows of the epoch order; rank r takes the r-th slice
    // (the last one is split as far as it goes, so N ranks see exactly the rows one process with N× the batch would).
    List<(List<TrainExample> Rows, List<TrainExample> Global)> MicroBatches(int step)
    {
        int epoch = step / StepsPerEpoch, within = step % StepsPerEpoch;
        if (_orderEpoch != epoch) { _orderCache = EpochOrder(epoch); _orderEpoch = epoch; }
        int bs = _args.PerDeviceTrainBatchSize, ga = _args.GradientAccumulationSteps, rank = _sync?.Rank ?? 0;
        var result = new List<(List<TrainExample>, List<TrainExample>)>();
        for (int b = within * ga; b < Math.Min((within + 1) * ga, _batchesPerEpoch); b++)
        {
            var global = _orderCache!.Skip(b * GlobalMicroBatch).Take(GlobalMicroBatch).Select(i => _train[i]).ToList();
            result.Add((WorldSize == 1 ? global : global.Skip(rank * bs).Take(bs).ToList(), global));
        }
        return result;
    }

    // ---- training ----

    public TrainResult Train(CancellationToken cancel = default)
    {
        var clock = Stopwatch.StartNew();
        manual_seed(_args.Seed);
        int resumedFrom = 0;
        try
        {
            if (IsMainProcess) RunGuard.PrepareOutputDir(_args);
            if (_args.ResumeFromCheckpoint is { Length: > 0 } resume && resume != "false")
                resumedFrom = LoadCheckpoint(ResumedFrom = ResolveCheckpoint(resume));
            var trainable = _optimizer.Groups.SelectMany(g => g.Params).Select(p => p.Param).ToList();
            _sync?.Start(Distributed.RunFingerprint.Of(_args, _target.Root, _train), trainable);
            var result = TrainLoop(clock, resumedFrom, trainable, cancel);
            _sync?.Barrier();
            return result;
        }
        // A stop request is no failure: every rank stops after the same step and the job ends normally.
        catch (Exception e) when (_sync is not null && e is not TrainingStoppedException) { _sync.Fail(); throw; }
    }

    TrainResult TrainLoop(Stopwatch clock, int resumedFrom, List<Tensor> trainable, CancellationToken cancel)
    {
        if (_eval is not null && _args.EvalOnStart && GlobalStep == 0 && IsMainProcess) EmitEval();
        double pendingLoss = _pendingLoss; int pendingSteps = _pendingSteps;
        long tokens = 0;
        // A run resumed at its last step takes no step; its final loss is the last one logged.
        double lastLoss = _logHistory.LastOrDefault(e => e["loss"] is not null)?["loss"]!.GetValue<double>() ?? double.NaN;
        var collector = new PeriodicCollector();
        using var tensorboard = IsMainProcess ? TensorBoardLogger.Attach(this, _args) : null;
        while (GlobalStep < TotalSteps)
        {
            bool stop = cancel.IsCancellationRequested;
            if (_sync is not null) stop = _sync.AnyRank(stop); // every rank stops after the same step
            if (stop) throw new TrainingStoppedException(GlobalStep, GlobalStep > resumedFrom ? SaveCheckpoint() : null);
            int step = GlobalStep;
            double factor = LrSchedule.Factor(_args, step, WarmupSteps, TotalSteps);
            foreach (var g in _optimizer.Groups) g.Lr = g.BaseLr * factor;
            foreach (var c in Callbacks) c.OnStepBegin(step);
            var (loss, gradNorm, stepTokens) = TrainStep(step, trainable);
            _optimizer.Step();
            foreach (var c in Callbacks) c.OnStepEnd(step);
            _optimizer.ZeroGrad();
            // Each step on big models; every few steps on tiny ones, where a collection (~1-2 ms) would be felt.
            collector.Tick();
            GlobalStep = step + 1;
            tokens += stepTokens;
            lastLoss = loss;
            pendingLoss += loss; pendingSteps++;
            _runLoss += loss; _runSteps++;
            double epoch = (double)GlobalStep / StepsPerEpoch;
            var lrs = _optimizer.Groups.Select(g => g.Lr).ToList();
            double lr = _optimizer.Groups.First(g => g.Params.Count > 0).Lr;
            StepCompleted?.Invoke(new StepRecord(GlobalStep, TotalSteps, epoch, loss, gradNorm, lr, lrs, stepTokens, clock.Elapsed));

            if (GlobalStep % _args.LoggingSteps == 0 || GlobalStep == TotalSteps || (GlobalStep == 1 && _args.LoggingFirstStep))
            {
                Emit(new JsonObject
                {
                    ["step"] = GlobalStep, ["total_steps"] = TotalSteps, ["epoch"] = Math.Round(epoch, 4),
                    ["loss"] = pendingLoss / pendingSteps, ["learning_rate"] = lr, ["grad_norm"] = gradNorm,
                    ["elapsed_s"] = Math.Round(clock.Elapsed.TotalSeconds, 3),
                }.WithLlamaFactoryFields(GlobalStep - resumedFrom, TotalSteps - resumedFrom, GlobalStep, TotalSteps, lr, clock.Elapsed));
                pendingLoss = 0; pendingSteps = 0;
            }
            _pendingLoss = pendingLoss; _pendingSteps = pendingSteps;
            bool improved = _eval is not null && IsMainProcess && _strategies.EvalAfter(GlobalStep) && EmitEval();
            if (_strategies.SaveAfter(GlobalStep, improved)) SaveCheckpoint();
            if (_args.TrimMemorySteps > 0 && GlobalStep % _args.TrimMemorySteps == 0) TorchRuntime.TrimMemory();
        }
        bool best = _eval is not null && IsMainProcess && EmitEval();
        if (_strategies.SaveAtEnd(best)) SaveCheckpoint();
        if (IsMainProcess)
        {
            if (_args.LoadBestModelAtEnd && _strategies.BestCheckpoint is { } bestDir && _strategies.BestStep != GlobalStep) LoadTrainable(bestDir);
            _logHistory.Add(TrainerStateFile.TrainSummary(this, _args, clock.Elapsed, _runSteps > 0 ? _runLoss / _runSteps : double.NaN, _train.Count));
            AtomicFolder.Write(_args.OutputDir, _target.Save, TrainerOutputs.KeepOnFinalSave(_args.OutputDir));
            TrainerStateFile.Write(_args.OutputDir, TrainerStateFile.Build(this, _args));
        }
        TorchRuntime.TrimMemory();
        return new TrainResult(GlobalStep, lastLoss, clock.Elapsed, tokens, resumedFrom);
    }

    double _pendingLoss; int _pendingSteps;
    double _runLoss; int _runSteps;

    (double Loss, double GradNorm, long Tokens) TrainStep(int step, IReadOnlyList<Tensor> trainable)
    {
        using var scope = NewDisposeScope();
        using var autocast = Bf16Base.Autocast(_args.Bf16);
        _target.Root.train();
        bool lm = _target.Task == TrainingTask.CausalLM;
        var micro = MicroBatches(step);
        // Trainer 4.57: one token count over the whole accumulated batch (of every rank); each micro loss is sum / count.
        long? numItems = lm ? micro.Sum(b => (long)b.Global.Sum(e => e.LabelTokens)) : null;
        if (numItems == 0) throw new PeftSharpException($"step {step + 1}: no row in the batch has a label token (all labels are -100)");
        double loss = 0; long tokens = 0;
        foreach (var (rows, global) in micro)
        {
            Tensor l;
            if (rows.Count > 0)
            {
                using var batch = TrainBatch.Collate(rows, _target.PadTokenId, _target.Device, !lm);
                var logits = _target.Forward(new ModelInputs { InputIds = batch.InputIds, AttentionMask = batch.AttentionMask }).Logits;
                l = lm ? Losses.CausalLM(logits, _target.LmLabels(batch.Labels), numItems) : Losses.Classification(logits, batch.Labels) / micro.Count;
                // This rank's share of the global loss, × ranks because the sync averages (HF's DDP does the same).
                if (WorldSize > 1) l = l * (lm ? WorldSize : (double)rows.Count / global.Count * WorldSize);
                tokens += batch.Tokens;
            }
            else if (_target.LossTerm is not null) l = zeros(1, device: _target.Device).sum(); // an empty slice of the last batch still adds the method's term
            else continue;
            if (_target.LossTerm is { } term) l = term(l);
            double v = l.ToDouble();
            if (!double.IsFinite(v) && _sync is null) throw NonFiniteLoss(step, v);
            l.backward();
            loss += v;
        }
        if (_sync is not null)
        {
            loss = _sync.AverageGradients(trainable, loss);
            if (!double.IsFinite(loss)) throw NonFiniteLoss(step, loss); // every rank sees the same mean, so every rank stops
        }
        GradientsComputed?.Invoke(step + 1);
        double norm = ClipGradNorm(trainable, _args.MaxGradNorm);
        if (!double.IsFinite(norm))
            throw new PeftSharpException($"step {step + 1}: the gradient norm is {norm} (loss {loss:G6}); stopped before applying the update. Lower learning_rate or check the data.");
        return (loss, norm, tokens);
    }

    PeftSharpException NonFiniteLoss(int step, double v) =>
        new($"step {step + 1}: the training loss is {v} (learning rate {_optimizer.Groups[0].Lr:G4}); " +
            "stopped before applying the update. Lower learning_rate, check the data, or turn off bf16.");

    /// <summary>torch.nn.utils.clip_grad_norm_: total L2 norm before clipping; grads × min(1, max/(norm+1e-6)).</summary>
    static double ClipGradNorm(IReadOnlyList<Tensor> parameters, double maxNorm)
    {
        using var scope = NewDisposeScope();
        using var _ = no_grad();
        var grads = parameters.Select(p => p.grad).Where(g => g is not null).Cast<Tensor>().ToList();
        if (grads.Count == 0) return 0;
        var total = stack(grads.Select(g => linalg.vector_norm(g, 2)).ToArray()).norm();
        double value = total.ToDouble();
        if (maxNorm > 0)
        {
            var coef = (maxNorm / (total + 1e-6)).clamp_max(1.0);
            foreach (var g in grads) g.mul_(coef);
        }
        return value;
    }

    // ---- evaluation ----

    /// <summary>Evaluates, logs, and returns whether the tracked metric (metric_for_best_model) improved.</summary>
    bool EmitEval()
    {
        var clock = Stopwatch.StartNew();
        var r = Evaluate(_eval!);
        var entry = new JsonObject { ["step"] = GlobalStep, ["epoch"] = Math.Round((double)GlobalStep / StepsPerEpoch, 4), ["eval_loss"] = r.Loss, ["eval_perplexity"] = r.Perplexity };
        if (r.Accuracy is { } acc) entry["eval_accuracy"] = acc;
        entry["eval_runtime"] = Math.Round(clock.Elapsed.TotalSeconds, 4);
        Emit(entry);
        return _strategies.Record(GlobalStep, entry);
    }

    /// <summary>HF's evaluation loss: each batch's mean loss, averaged with the batch's row count as weight.</summary>
    public EvalResult Evaluate(IReadOnlyList<TrainExample> data)
    {
        using var autocast = Bf16Base.Autocast(_args.Bf16);
        return Evaluation.Run(_target, data, _args.PerDeviceEvalBatchSize);
    }

    void Emit(JsonObject entry)
    {
        _logHistory.Add(entry);
        if (!IsMainProcess) return;
        Directory.CreateDirectory(_args.OutputDir);
        File.AppendAllText(Path.Combine(_args.OutputDir, "trainer_log.jsonl"), entry.ToJsonString() + "\n");
        Logged?.Invoke(entry);
    }

    // ---- checkpoints ----

    const string StateFile = "trainer_state.json", TrainableFile = "trainable.safetensors", OptimizerFile = "optimizer.safetensors", RngFile = "rng_state.safetensors",
        CallbacksFile = "callbacks.safetensors";

    // Resumable callbacks in order; their keys are saved as "{index}.{key}".
    IEnumerable<(string Prefix, IResumableCallback Callback)> ResumableCallbacks() =>
        Callbacks.OfType<IResumableCallback>().Select((c, i) => ($"{i}.", c));

    /// <summary>Writes output_dir/checkpoint-N atomically (a temp folder renamed into place), then prunes old ones.</summary>
    public string SaveCheckpoint()
    {
        var final = Path.Combine(_args.OutputDir, $"checkpoint-{GlobalStep}");
        if (!IsMainProcess) return final;
        AtomicFolder.Write(final, tmp => WriteCheckpoint(tmp, final));
        _strategies.Saved(GlobalStep, final);
        Prune();
        CheckpointSaved?.Invoke(final);
        return final;
    }

    void WriteCheckpoint(string tmp, string final)
    {
        _target.Save(tmp);
        SafetensorsWriter.Save(Path.Combine(tmp, TrainableFile),
            _target.Root.named_parameters().Where(p => p.parameter.requires_grad).Select(p => new KeyValuePair<string, Tensor>(p.name, p.parameter)));
        _optimizer.Save(Path.Combine(tmp, OptimizerFile));
        if (ResumableCallbacks().Any())
        {
            using var scope = NewDisposeScope();
            SafetensorsWriter.Save(Path.Combine(tmp, CallbacksFile), ResumableCallbacks()
                .SelectMany(c => c.Callback.SaveState().Select(kv => new KeyValuePair<string, Tensor>(c.Prefix + kv.Key, kv.Value))).ToList());
        }
        using (var rng = get_rng_state()) SafetensorsWriter.Save(Path.Combine(tmp, RngFile), new[] { new KeyValuePair<string, Tensor>("cpu", rng) });
        // HF's trainer_state.json fields, plus what an exact resume needs and the run it belongs to.
        var state = TrainerStateFile.Build(this, _args);
        state["total_steps"] = TotalSteps; state["steps_per_epoch"] = StepsPerEpoch;
        state["seed"] = _args.Seed; state["per_device_train_batch_size"] = _args.PerDeviceTrainBatchSize;
        state["gradient_accumulation_steps"] = _args.GradientAccumulationSteps; state["train_rows"] = _train.Count; state["world_size"] = WorldSize;
        state["pending_loss"] = _pendingLoss; state["pending_steps"] = _pendingSteps;
        state["run"] = RunFingerprint();
        if (_strategies.BestStep == GlobalStep) state["best_model_checkpoint"] = final;
        AtomicFile.WriteAllText(Path.Combine(tmp, StateFile), state.ToJsonString(new JsonSerializerOptions { WriteIndented = true }));
    }

    static IEnumerable<(int Step, string Dir)> Checkpoints(string outputDir) =>
        !Directory.Exists(outputDir) ? Enumerable.Empty<(int, string)>()
        : Directory.EnumerateDirectories(outputDir, "checkpoint-*")
            .Select(d => (Ok: int.TryParse(Path.GetFileName(d)["checkpoint-".Length..], out var n), n, d))
            .Where(x => x.Ok).Select(x => (x.n, x.d)).OrderBy(x => x.n);

    void Prune()
    {
        if (_args.SaveTotalLimit <= 0) return;
        // As HF, the best checkpoint is never pruned.
        var all = Checkpoints(_args.OutputDir).Where(c => c.Dir != _strategies.BestCheckpoint).ToList();
        foreach (var (_, dir) in all.Take(Math.Max(0, all.Count - _args.SaveTotalLimit))) Directory.Delete(dir, true);
    }

    string ResolveCheckpoint(string resume)
    {
        if (resume is "true" or "last" or "latest")
        {
            var last = Checkpoints(_args.OutputDir).LastOrDefault();
            return last.Dir ?? throw new PeftConfigException($"resume_from_checkpoint: no checkpoint-N folder in output_dir '{_args.OutputDir}'");
        }
        if (!Directory.Exists(resume)) throw new PeftConfigException($"resume_from_checkpoint: folder '{resume}' not found");
        return resume;
    }

    JsonObject RunFingerprint() => RunGuard.Fingerprint(
        _target.Root.named_parameters().Where(p => p.parameter.requires_grad).Select(p => (p.name, p.parameter.shape)), _target.Model.Config);

    /// <summary>Restores weights, optimizer, RNG, step and log state from a checkpoint folder; returns its step.</summary>
    public int LoadCheckpoint(string dir)
    {
        var statePath = Path.Combine(dir, StateFile);
        var state = RunGuard.ReadState(dir, TotalSteps);
        RunGuard.CheckSameRun(statePath, state, RunFingerprint());
        void Same(string key, long now)
        {
            long then = state[key]!.GetValue<long>();
            if (then != now) throw new PeftConfigException($"{statePath}: {key} was {then} when the checkpoint was written but is {now} now; resuming would not continue the same run");
        }
        Same("seed", _args.Seed);
        // Any number of ranks may resume a checkpoint as long as the global batch (per-rank batch × ranks) is the same.
        long ranksThen = state["world_size"]?.GetValue<long>() ?? 1, batchThen = state["per_device_train_batch_size"]!.GetValue<long>() * ranksThen;
        if (batchThen != GlobalMicroBatch)
            throw new PeftConfigException($"{statePath}: the batch (per_device_train_batch_size × ranks) was {batchThen} when the checkpoint was written " +
                $"but is {_args.PerDeviceTrainBatchSize} × {WorldSize} = {GlobalMicroBatch} now; resuming would not continue the same run");
        Same("gradient_accumulation_steps", _args.GradientAccumulationSteps);
        Same("train_rows", _train.Count);
        LoadTrainable(dir);
        _optimizer.Load(Path.Combine(dir, OptimizerFile));
        if (ResumableCallbacks().Any())
        {
            var path = Path.Combine(dir, CallbacksFile);
            if (!File.Exists(path)) throw new PeftFormatException(dir, $"the method's training hooks have state but the checkpoint has no {CallbacksFile}");
            using var file = SafetensorsFile.Open(path);
            foreach (var (prefix, callback) in ResumableCallbacks())
            {
                var saved = file.Keys.Where(k => k.StartsWith(prefix, StringComparison.Ordinal))
                    .ToDictionary(k => k[prefix.Length..], k => file.Load(k, _target.Device));
                try { callback.LoadState(saved); }
                finally { foreach (var t in saved.Values) t.Dispose(); }
            }
        }
        using (var file = SafetensorsFile.Open(Path.Combine(dir, RngFile)))
        using (var rng = file.Load("cpu")) set_rng_state(rng);
        GlobalStep = state["global_step"]!.GetValue<int>();
        _pendingLoss = state["pending_loss"]!.GetValue<double>();
        _pendingSteps = state["pending_steps"]!.GetValue<int>();
        _logHistory.Clear();
        foreach (var e in state["log_history"]!.AsArray()) _logHistory.Add(e!.DeepClone().AsObject());
        _strategies.Restore(state, statePath);
        return GlobalStep;
    }

    /// <summary>Copies a checkpoint's trainable tensors into the model (resume, load_best_model_at_end).</summary>
    void LoadTrainable(string dir)
    {
        using var file = SafetensorsFile.Open(Path.Combine(dir, TrainableFile));
        using var _ = no_grad();
        foreach (var (name, p) in _target.Root.named_parameters().Where(p => p.parameter.requires_grad))
        {
            if (!file.Contains(name)) throw new PeftFormatException(file.FilePath, $"no tensor for trainable parameter '{name}'");
            using var t = file.Load(name, p.device, p.dtype);
            p.copy_(t);
        }
    }

    public void Dispose()
    {
        _optimizer.Dispose();
        _neftune?.Dispose();
        if (_args.GradientCheckpointing) GradientCheckpointing.Disable(_target.Model);
    }
}
