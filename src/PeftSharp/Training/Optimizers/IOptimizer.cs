namespace PeftSharp.Training.Optimizers;

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
