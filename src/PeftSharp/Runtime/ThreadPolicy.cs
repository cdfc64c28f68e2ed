using System.Diagnostics;
using System.Runtime.InteropServices;

namespace PeftSharp.Runtime;

/// <summary>
/// How many threads libtorch uses, chosen from the cores other processes leave free rather than from the core count:
/// OpenMP's threads meet at a barrier after every op, so one thread that shares its core with another busy process
/// stalls all of them (a train step on 2 cores next to one CPU-bound process took over 10× its idle time with 2
/// threads). <c>PEFTSHARP_THREADS</c>: unset or <c>auto</c> measures the other processes' CPU use (from
/// <c>/proc/stat</c>, less our own) at start-up and again every few seconds from the loops that tick a
/// <see cref="PeriodicCollector"/>; a number fixes the count. A thread count set by the application through
/// <c>torch.set_num_threads</c> is left alone from then on. Before libtorch loads, OpenMP's spin-wait is also shortened
/// (<c>GOMP_SPINCOUNT</c>, <c>KMP_BLOCKTIME</c>) unless the user set the OpenMP variables.
/// </summary>
public static class ThreadPolicy
{
    public const string ThreadsVariable = "PEFTSHARP_THREADS";

    /// <summary>Spins before an idle OpenMP thread sleeps (libgomp's default is 300,000, ~0.1-1 ms of a busy core).</summary>
    public const string SpinCount = "10000";

    /// <summary>How often the loops' ticks re-measure the free cores.</summary>
    public static readonly TimeSpan AdjustInterval = TimeSpan.FromSeconds(3);

    [DllImport("libc", EntryPoint = "setenv")] static extern int SetEnv(string name, string value, int overwrite);

    static readonly object Gate = new();
    static CpuSample? _last;
    static readonly Stopwatch SinceAdjust = new();
    static int _applied; // 0 until the policy has set a count
    static bool _userOwned;

    /// <summary>The last choice and why, for logs and benchmark footers.</summary>
    public static string Status { get; private set; } = "libtorch default";

    /// <summary>Before libtorch loads: OpenMP waits briefly, then sleeps, instead of spinning for ~1 ms on a core someone else needs.</summary>
    internal static void ConfigureOpenMp()
    {
        if (!OperatingSystem.IsLinux()) return;
        try
        {
            if (Environment.GetEnvironmentVariable("OMP_WAIT_POLICY") is null) SetEnv("GOMP_SPINCOUNT", SpinCount, 0);
            SetEnv("KMP_BLOCKTIME", "0", 0);
            _last = CpuSample.Take();
            SinceAdjust.Start();
        }
        catch (Exception e) when (e is DllNotFoundException or EntryPointNotFoundException) { }
    }

    /// <summary>The fixed count from <c>PEFTSHARP_THREADS</c>, or null for auto; throws for a bad value.</summary>
    public static int? Fixed()
    {
        var v = Environment.GetEnvironmentVariable(ThreadsVariable);
        if (string.IsNullOrWhiteSpace(v) || v.Trim().Equals("auto", StringComparison.OrdinalIgnoreCase)) return null;
        return int.TryParse(v, out var n) && n > 0 ? n
            : throw new PeftConfigException($"{ThreadsVariable}={v}: expected a positive number of threads or 'auto'");
    }

    /// <summary>Threads for <paramref name="cores"/> cores when other processes keep <paramref name="othersBusy"/> cores busy.</summary>
    public static int Choose(int cores, double othersBusy) =>
        Math.Clamp((int)Math.Floor(cores - othersBusy + 0.3), 1, Math.Max(1, cores));

    /// <summary>After libtorch loads: the first choice (called by <see cref="TorchRuntime.EnsureInitialized"/>).</summary>
    internal static void ApplyInitial()
    {
        if (Fixed() is { } n)
        {
            Set(n, $"{n} ({ThreadsVariable}={n})");
            _userOwned = true;
            return;
        }
        Adjust(force: true);
    }

    /// <summary>Re-measures the free cores when <see cref="AdjustInterval"/> has passed and changes the thread count if they changed.</summary>
    public static void Adjust(bool force = false)
    {
        if (_userOwned || !OperatingSystem.IsLinux()) return;
        lock (Gate)
        {
            if (!force && SinceAdjust.Elapsed < AdjustInterval) return;
            // Someone else called torch.set_num_threads: theirs from now on.
            if (_applied != 0 && TorchSharp.torch.get_num_threads() != _applied) { _userOwned = true; Status = $"{TorchSharp.torch.get_num_threads()} (set by the application)"; return; }
            var now = CpuSample.Take();
            if (now is null || _last is null) { _last = now; return; }
            if (now.OthersBusyCores(_last) is not { } busy) return; // too short a window: measure on the next tick
            _last = now;
            SinceAdjust.Restart();
            int threads = Choose(now.Cores, busy);
            if (threads != _applied)
                Set(threads, string.Create(System.Globalization.CultureInfo.InvariantCulture, $"{threads} of {now.Cores} cores (others busy on {busy:F1}; {ThreadsVariable}=N fixes it)"));
        }
    }

    /// <summary>Fixes the thread count at <paramref name="n"/> for the rest of the process (what <c>PEFTSHARP_THREADS=n</c> does).</summary>
    public static void Fix(int n)
    {
        if (n <= 0) throw new ArgumentOutOfRangeException(nameof(n), n, "threads must be positive");
        lock (Gate)
        {
            Set(n, $"{n} (fixed)");
            _userOwned = true;
        }
    }

    static void Set(int n, string status)
    {
        TorchSharp.torch.set_num_threads(n);
        _applied = n;
        Status = status;
    }

    /// <summary>Jiffies of the CPUs this process may run on, and this process's own.</summary>
    sealed record CpuSample(int Cores, long Total, long Idle, long Self)
    {
        /// <summary>Cores' worth of CPU time other processes used between <paramref name="before"/> and this sample.</summary>
        public double? OthersBusyCores(CpuSample before)
        {
            long total = Total - before.Total;
            if (total <= Cores) return null; // too short to tell
            long busy = total - (Idle - before.Idle);
            double others = Math.Max(0, busy - (Self - before.Self));
            return others / ((double)total / Cores);
        }

        public static CpuSample? Take()
        {
            try
            {
                var allowed = AllowedCpus();
                long total = 0, idle = 0; int cores = 0;
                foreach (var line in File.ReadLines("/proc/stat"))
                {
                    if (!line.StartsWith("cpu", StringComparison.Ordinal) || line.Length < 4 || !char.IsDigit(line[3])) continue;
                    var f = line.Split(' ', StringSplitOptions.RemoveEmptyEntries);
                    if (allowed is not null && !allowed.Contains(int.Parse(f[0].AsSpan(3)))) continue;
                    // user nice system idle iowait irq softirq steal (guest time is already in user)
                    for (int i = 1; i <= Math.Min(8, f.Length - 1); i++) total += long.Parse(f[i]);
                    idle += long.Parse(f[4]) + (f.Length > 5 ? long.Parse(f[5]) : 0);
                    cores++;
                }
                // /proc/self/stat: fields after the ")" of the command name; utime and stime are the 14th and 15th.
                var stat = File.ReadAllText("/proc/self/stat");
                var rest = stat[(stat.LastIndexOf(')') + 2)..].Split(' ');
                long self = long.Parse(rest[11]) + long.Parse(rest[12]);
                return cores == 0 ? null : new CpuSample(cores, total, idle, self);
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException or FormatException or IndexOutOfRangeException) { return null; }
        }

        static HashSet<int>? AllowedCpus()
        {
            try
            {
                long mask = (long)Process.GetCurrentProcess().ProcessorAffinity;
                var set = new HashSet<int>();
                for (int i = 0; i < 64; i++) if ((mask & (1L << i)) != 0) set.Add(i);
                return set.Count == 0 || set.Count == 64 ? null : set;
            }
            catch (Exception) { return null; }
        }
    }
}
