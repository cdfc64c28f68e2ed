using PeftSharp.Models;
using PeftSharp.Training.Data;
using TorchSharp;
using static TorchSharp.torch;

namespace PeftSharp.Training;

/// <summary>Loss/perplexity (and accuracy for classification) of a model over a dataset, in eval mode without gradients.</summary>
public static class Evaluation
{
    public static EvalResult Run(TrainingTarget target, IReadOnlyList<TrainExample> data, int batchSize)
    {
        if (data.Count == 0) throw new PeftSharpException("the evaluation set is empty");
        bool lm = target.Task == TrainingTask.CausalLM;
        bool wasTraining = target.Root.training;
        target.Root.eval();
        double weighted = 0; long correct = 0; int rows = 0;
        using var progress = Runtime.PeftProgress.Begin("evaluating", data.Count, "rows");
        try
        {
            using var _ = no_grad();
            var collector = new Runtime.PeriodicCollector();
            for (int i = 0; i < data.Count; i += batchSize)
            {
                using var scope = NewDisposeScope();
                var chunk = data.Skip(i).Take(batchSize).ToList();
                using var batch = TrainBatch.Collate(chunk, target.PadTokenId, target.Device, !lm);
                var logits = target.Forward(new ModelInputs { InputIds = batch.InputIds, AttentionMask = batch.AttentionMask }).Logits;
                var loss = lm ? Losses.CausalLM(logits, target.LmLabels(batch.Labels)) : Losses.Classification(logits, batch.Labels);
                double v = loss.ToDouble();
                if (double.IsFinite(v) || !lm) weighted += v * chunk.Count;
                if (!lm) correct += logits.argmax(-1).eq(batch.Labels).sum().item<long>();
                rows += chunk.Count;
                progress.Report(rows, $"loss {weighted / rows:F4}");
                collector.Tick();
            }
        }
        finally { target.Root.train(wasTraining); }
        double mean = weighted / rows;
        return new EvalResult(mean, Math.Exp(mean), lm ? null : (double)correct / rows, rows);
    }
}
