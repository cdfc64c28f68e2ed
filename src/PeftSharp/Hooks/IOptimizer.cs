using static TorchSharp.torch;

namespace PeftSharp.Hooks;

/// <summary>What the trainer needs from an optimizer: groups whose lr it schedules, a step, and resumable state.</summary>
public interface IOptimizer : IDisposable
{
    IReadOnlyList<ParamGroup> Groups { get; }
    long StepCount { get; }
    void Step();
    void ZeroGrad();
    void Save(string path);
    void Load(string path);
}

/// <summary>One optimizer parameter group: named parameters sharing a learning rate and weight decay.</summary>
public sealed class ParamGroup
{
    public required string Name { get; init; }
    public required IReadOnlyList<(string Name, Tensor Param)> Params { get; init; }
    /// <summary>The lr the schedule scales.</summary>
    public required double BaseLr { get; init; }
    public required double WeightDecay { get; init; }
    /// <summary>The lr of the current step (BaseLr × schedule factor).</summary>
    public double Lr { get; set; }
}
