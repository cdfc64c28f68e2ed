using System.CommandLine;
using System.Diagnostics;
using PeftSharp.Cli.Quickstart;
using PeftSharp.Training.Quickstart;
using PeftSharp.Inference;
using PeftSharp.Models;
using PeftSharp.Training;
using PeftSharp.Training.Data;

namespace PeftSharp.Cli.Commands;

/// <summary>
/// <c>peft quickstart</c>: the whole workflow offline in a few minutes. Pretrains a small Llama on a generated copy
/// corpus, fine-tunes it on reversal (which the base cannot do), reports held-out exact-match accuracy before and
/// after, saves the result, and generates with it.
/// </summary>
public static class QuickstartCommand
{
    public static Command Create()
    {
        var output = new Option<string>("--output") { Description = "Folder for the base model, adapter, merged model and plots", DefaultValueFactory = _ => "quickstart-output" };
        // Learning reversal is a jump off a loss plateau, so a seed can miss it: with the answer-only pretraining 13 of
        // seeds 40-53 reached 100 % (41: 66 %). 44 reached 100 % under every change tried (either AdamW path, 1 or 2
        // threads, MKL's AVX2 kernels). QuickstartCommandTests guards the default.
        var seed = new Option<int>("--seed") { Description = "Seed for the corpus and the models", DefaultValueFactory = _ => 44 };
        var methodOption = new Option<string>("--method") { Description = "lora (default) or full", DefaultValueFactory = _ => "lora" };
        var tiny = new Option<bool>("--tiny") { Description = "A much shorter run (seconds; accuracy stays low) to check the pipeline", Hidden = true };
        var cmd = new Command("quickstart", "Pretrain a small model, fine-tune it on a new task, and show before/after accuracy (no download)") { output, seed, methodOption, tiny };
        cmd.SetHandler((pr, o) =>
        {
            bool json = pr.GetValue(Cli.JsonOption), small = pr.GetValue(tiny);
            var dir = pr.GetValue(output)!;
            int s = pr.GetValue(seed);
            var clock = Stopwatch.StartNew();
            void Say(string line) { if (!json) o.WriteLine(line); }
            var task = new QuickstartTask(s);
            var heldOut = task.HeldOut("rv", small ? 16 : 100);
            var copies = task.HeldOut("cp", small ? 16 : 100);

            TorchSharp.torch.manual_seed(s);
            using var model = QuickstartTask.BuildModel(small ? 64 : 128, small ? 2 : 4);
            Say($"1/4 pretraining a {model.Config.NumHiddenLayers}-layer Llama ({model.ParameterCount():N0} parameters) on a generated copy corpus (\"cp kqz=kqz\")");
            var baseDir = Path.Combine(dir, "base");
            var pretrain = new TrainingArguments
            {
                OutputDir = baseDir, LearningRate = 3e-3, MaxSteps = small ? 20 : 500, PerDeviceTrainBatchSize = 32,
                WarmupRatio = 0.05, LrSchedulerType = "cosine", LoggingSteps = 10, WeightDecay = 0.01, Seed = s,
            };
            var baseRun = Run(o, json, TrainingTarget.Full(model), pretrain, task.Pretraining(small ? 200 : 8000), "pretraining (full)");
            QuickstartTask.WriteTokenizer(baseDir);
            double copyAcc = QuickstartTask.Accuracy(model, copies);
            double before = QuickstartTask.Accuracy(model, heldOut);
            Say($"   base model: copy accuracy {copyAcc:P0}; reversal (\"rv kqz=zqk\", never seen) accuracy {before:P0}");

            var (target, peft, method, lr, steps) = QuickstartFineTune.Target(model, baseDir, pr.GetValue(methodOption)!);
            var adapterDir = Path.Combine(dir, peft is null ? "finetuned" : "adapter");
            var fineTune = new TrainingArguments
            {
                OutputDir = adapterDir, LearningRate = lr, MaxSteps = small ? 20 : steps, PerDeviceTrainBatchSize = 32,
                WarmupRatio = 0.05, LrSchedulerType = "cosine", LoggingSteps = 10, Seed = s,
            };
            Say($"2/4 fine-tuning on reversal with {method}");
            var ftRun = Run(o, json, target, fineTune, task.FineTuning(small ? 200 : 4000), $"fine-tuning ({method})");
            double after = QuickstartTask.Accuracy(model, heldOut);
            Say($"   held-out reversal accuracy: {before:P0} before -> {after:P0} after");

            var mergedDir = Path.Combine(dir, "merged");
            var merged = QuickstartFineTune.Merge(model, peft, mergedDir);
            QuickstartTask.WriteTokenizer(mergedDir);
            Say($"3/4 saved the base model to {baseDir}, the fine-tuned weights to {adapterDir} ({AdapterKb(adapterDir):F0} KB), the merged model to {mergedDir}");
            var samples = new[] { "hello", "peft", "sharp" };
            var gen = new TextGenerator(merged).Generate(samples.Select(w => (IReadOnlyList<int>)new[] { QuickstartTask.Bos }.Concat(QuickstartTask.Encode($"rv {w}=")).ToList()).ToList(),
                new GenerationOptions { MaxNewTokens = 8, EosTokenIds = new[] { QuickstartTask.Eos }, PadTokenId = QuickstartTask.Pad });
            var outputs = samples.Select((w, i) => (Prompt: $"rv {w}=", Output: QuickstartTask.Decode(gen.NewTokens[i]))).ToList();
            Say("4/4 generating with the merged model:");
            foreach (var (p, t) in outputs) Say($"   {p}{t}");
            Say($"done in {clock.Elapsed.TotalSeconds:F0} s. Loss curves: {Path.Combine(baseDir, "loss.png")}, {Path.Combine(adapterDir, "loss.png")}");
            Say($"next: peft generate --model {mergedDir} --prompt \"rv world=\" --max-new-tokens 8");
            if (json)
                Cli.WriteJson(o, new
                {
                    OutputDir = dir, Method = method, CopyAccuracy = copyAcc, AccuracyBefore = before, AccuracyAfter = after,
                    PretrainLoss = baseRun.TrainLoss, FineTuneLoss = ftRun.TrainLoss, Seconds = clock.Elapsed.TotalSeconds,
                    Samples = outputs.Select(x => new { x.Prompt, x.Output }),
                });
            return 0;
        });
        return cmd;
    }

    static double AdapterKb(string dir) => PeftSharp.IO.FileSizes.OfFolder(dir, "*.safetensors") / 1024.0;

    static TrainResult Run(TextWriter o, bool json, TrainingTarget target, TrainingArguments args, List<TrainExample> rows, string title)
    {
        var log = Path.Combine(args.OutputDir, "trainer_log.jsonl");
        if (File.Exists(log)) File.Delete(log);
        var reporter = new TrainingReporter(o, json, title);
        using var trainer = new Trainer(target, args, rows);
        reporter.Attach(trainer);
        var result = trainer.Train();
        var summary = reporter.Finish(result, target, args.OutputDir, reporter.SavePlot(args.OutputDir), null);
        reporter.Print(summary);
        return result;
    }
}
