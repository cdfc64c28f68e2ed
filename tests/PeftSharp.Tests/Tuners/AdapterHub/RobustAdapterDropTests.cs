using TorchSharp;
using PeftSharp.Tests.Tokenization;
using PeftSharp.Training;
using PeftSharp.Tuners;
using PeftSharp.Tuners.AdapterHub;
using PeftSharp.Tuners.Bottleneck;

namespace PeftSharp.Tests.Tuners.AdapterHub;

/// <summary>robust_adapter_drop in a peft train YAML: each step skips the adapters of the first n blocks (n random per step).</summary>
// Seeds and trains through the global torch RNG: run outside the parallel phase so concurrent trainer tests stay deterministic.
[Collection(nameof(PeftSharp.Tests.Runtime.MemoryCollection))]
public class RobustAdapterDropTests
{
    static string Yaml(string keys)
    {
        var model = TinyTokenizer.ModelWithTokenizer("llama-tiny");
        var dir = TestPaths.TempDir();
        File.WriteAllLines(Path.Combine(dir, "data.jsonl"), Enumerable.Range(0, 8).Select(i => $"{{\"instruction\":\"count {i}\",\"output\":\"{i} {i + 1} {i + 2}\"}}"));
        var yaml = Path.Combine(dir, "run.yaml");
        File.WriteAllText(yaml, $"model_name_or_path: {model}\n{keys}\ndataset: data.jsonl\ntemplate: alpaca\ncutoff_len: 256\n" +
            $"max_steps: 8\nper_device_train_batch_size: 4\nlearning_rate: 1.0e-2\nlogging_steps: 1\nshuffle: false\noutput_dir: {Path.Combine(dir, "out")}\n");
        return yaml;
    }

    [Fact]
    public void Training_runs_and_the_dropped_blocks_adapters_get_no_gradient()
    {
        var cfg = TrainConfig.Load(Yaml("finetuning_type: adapter\nadapter_config: double_seq_bn\nreduction_factor: 4\nrobust_adapter_drop: true"));
        using var setup = TrainSetup.FromConfig(cfg);
        var drop = Assert.IsType<RobustAdapterDrop>(Assert.Single(setup.Target.Callbacks));
        Assert.Equal(1, drop.MaxLayers); // llama-tiny has 2 blocks: AdapterHub's example drops 0..num_layers-1
        var slots = ((PeftModel)setup.Target.Root).AdapterLayers().Select(l => l.Layer).OfType<AdapterSlot>().ToList();
        Assert.Equal(4, slots.Count);
        var dropped = new List<int>();
        using var trainer = new Trainer(setup.Target, cfg.Training, setup.Train, setup.Eval);
        trainer.GradientsComputed += _ =>
        {
            dropped.Add(drop.Dropped);
            foreach (var s in slots)
            {
                bool learns = s[s.Adapters[0]].parameters().Any(p => p.grad is { } g && g.abs().sum().ToDouble() > 0);
                Assert.True(learns == s.Layer >= drop.Dropped, $"step {dropped.Count}: {drop.Dropped} blocks dropped, block {s.Layer} {(learns ? "got" : "did not get")} a gradient");
            }
        };
        var result = trainer.Train();
        Assert.Equal(8, result.GlobalStep);
        Assert.Contains(0, dropped);
        Assert.Contains(1, dropped);
        Assert.Equal(0, drop.Dropped); // nothing stays dropped for evaluation and saving
        Assert.True(File.Exists(Path.Combine(cfg.Training.OutputDir, AdapterHubMethod.WeightsFile)));
    }

    [Fact]
    public void The_key_is_checked()
    {
        var ex = Assert.Throws<PeftConfigException>(() => TrainSetup.FromConfig(TrainConfig.Load(Yaml("finetuning_type: mam\nrobust_adapter_drop: true"))));
        Assert.Contains("finetuning_type adapter", ex.Message);
        ex = Assert.Throws<PeftConfigException>(() => TrainSetup.FromConfig(TrainConfig.Load(Yaml("finetuning_type: adapter\nrobust_adapter_drop: 5"))));
        Assert.Contains("at most 2 layers", ex.Message);
    }
}
