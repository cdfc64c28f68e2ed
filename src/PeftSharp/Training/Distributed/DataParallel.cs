namespace PeftSharp.Training.Distributed;

/// <summary>
/// Finds out whether this process is one rank of a data-parallel job. A launcher (Open MPI's mpirun, MPICH's
/// mpiexec, Slurm's srun with PMI/PMIx) says so in the environment; without one nothing changes and nothing MPI is
/// loaded, so single-process users need no MPI at all.
/// </summary>
public static class DataParallel
{
    /// <summary>Rank, number of ranks and rank on this machine as the launcher's environment gives them (0, 1, 0 when none did).</summary>
    public static (int Rank, int WorldSize, int LocalRank) Launch { get; } = FromEnvironment(Environment.GetEnvironmentVariable);

    /// <summary>Number of ranks the launcher started (1 without one).</summary>
    public static int WorldSize => Launch.WorldSize;

    /// <summary>Whether this process writes outputs: rank 0, or the only process.</summary>
    public static bool IsMainProcess => Launch.Rank == 0;

    static IGradientSync? _shared;
    static readonly object Gate = new();

    /// <summary>
    /// The gradient sync of this process: null when it is not one rank of several; otherwise the MPI one, initialized
    /// on first use (MPI can be initialized once per process, so every trainer shares it).
    /// </summary>
    public static IGradientSync? Current()
    {
        if (WorldSize <= 1) return null;
        lock (Gate) return _shared ??= MpiGradientSync.Create();
    }

    /// <summary>Reads the launcher's variables (Open MPI, then MPICH/Hydra's PMI, then Slurm under PMI or PMIx).</summary>
    public static (int Rank, int WorldSize, int LocalRank) FromEnvironment(Func<string, string?> env)
    {
        static int? Int(string? v) => int.TryParse(v, out var n) ? n : null;
        if (Int(env("OMPI_COMM_WORLD_SIZE")) is { } ompiSize)
            return (Int(env("OMPI_COMM_WORLD_RANK")) ?? 0, ompiSize, Int(env("OMPI_COMM_WORLD_LOCAL_RANK")) ?? 0);
        if (Int(env("PMI_SIZE")) is { } pmiSize)
            return (Int(env("PMI_RANK")) ?? 0, pmiSize, Int(env("MPI_LOCALRANKID")) ?? 0);
        if ((env("PMIX_RANK") ?? env("PMI_RANK")) is not null && Int(env("SLURM_NTASKS")) is { } slurmSize)
            return (Int(env("SLURM_PROCID")) ?? 0, slurmSize, Int(env("SLURM_LOCALID")) ?? 0);
        return (0, 1, 0);
    }
}
