using System.Diagnostics;
using System.Security.Cryptography;
using System.Text;
using TorchSharp;
using static TorchSharp.torch;

namespace PeftSharp.Training.Distributed;

/// <summary>
/// Data parallelism over Open MPI. Each step's gradients (and the loss) are copied into one float32 host buffer in
/// the trainer's parameter order and summed with a single MPI_Allreduce, so the cost is one collective of
/// 4 bytes × trainable parameters per step whatever the device. A watchdog ends the job when a collective waits
/// longer than <see cref="TimeoutVariable"/> seconds (a stopped or hung rank), and a rank that fails aborts the job
/// on exit instead of leaving the others waiting.
/// </summary>
internal sealed unsafe class MpiGradientSync : IGradientSync
{
    /// <summary>Seconds a collective may wait for the other ranks (rank 0 evaluating or saving counts) before the job is ended.</summary>
    public const string TimeoutVariable = "PEFT_MPI_TIMEOUT_S";
    const int DefaultTimeoutSeconds = 1800;
    // MPI counts are ints; larger buffers go in pieces of this many elements.
    const int MaxPiece = 1 << 30;

    readonly OpenMpi _mpi;
    readonly TimeSpan _timeout;
    string? _inFlight; long _inFlightSince;
    volatile bool _failed, _done, _stopped;

    public int Rank { get; }
    public int WorldSize { get; }

    MpiGradientSync(OpenMpi mpi, TimeSpan timeout)
    {
        _mpi = mpi; _timeout = timeout;
        Rank = mpi.Rank; WorldSize = mpi.Size;
        AppDomain.CurrentDomain.ProcessExit += (_, _) => Exit();
        AppDomain.CurrentDomain.UnhandledException += (_, _) => _failed = true;
        new Thread(Watch) { IsBackground = true, Name = "peft-mpi-watchdog" }.Start();
    }

    public static MpiGradientSync Create()
    {
        var mpi = OpenMpi.Load();
        mpi.Init();
        var raw = Environment.GetEnvironmentVariable(TimeoutVariable);
        double seconds = DefaultTimeoutSeconds;
        if (raw is not null && (!double.TryParse(raw, System.Globalization.CultureInfo.InvariantCulture, out seconds) || seconds <= 0))
            throw new PeftConfigException($"environment variable {TimeoutVariable} is '{raw}'; expected a number of seconds > 0");
        return new MpiGradientSync(mpi, TimeSpan.FromSeconds(seconds));
    }

    public void Start(RunFingerprint fingerprint, IReadOnlyList<Tensor> trainable)
    {
        CheckSame(fingerprint);
        using var scope = NewDisposeScope();
        using var _ = no_grad();
        var flat = Pack(trainable, p => p, extra: Array.Empty<float>());
        Guard("broadcast of the initial weights", () => ForPieces(flat, (ptr, n) => _mpi.Bcast((void*)ptr, n * sizeof(float), 0)));
        Unpack(flat, trainable, (_, p, chunk) => p.copy_(chunk));
    }

    public double AverageGradients(IReadOnlyList<Tensor> trainable, double loss)
    {
        using var scope = NewDisposeScope();
        using var _ = no_grad();
        var grads = trainable.Select(p => p.grad).ToList();
        // One buffer: every gradient (zeros where a rank has none), then one "has a gradient" flag per parameter, then the loss.
        var extra = grads.Select(g => g is null ? 0f : 1f).Append((float)loss).ToArray();
        var flat = Pack(trainable, p => p.grad, extra);
        Guard("gradient allreduce", () => ForPieces(flat, (ptr, n) => _mpi.AllreduceSum((float*)ptr, n)));
        flat.div_(WorldSize);
        var tail = flat.narrow(0, flat.shape[0] - extra.Length, extra.Length).data<float>().ToArray();
        Unpack(flat, trainable, (i, p, chunk) =>
        {
            if (tail[i] == 0) return; // no rank has a gradient for it: leave it without one, as a single process would
            if (p.grad is { } g) g.copy_(chunk);
            else p.grad = chunk.to(p.dtype, p.device).clone().DetachFromDisposeScope();
        });
        return tail[^1];
    }

    public bool AnyRank(bool mine)
    {
        var flag = new[] { mine ? 1f : 0f };
        fixed (float* f = flag)
        {
            var ptr = (nint)f;
            Guard("agreement on stopping", () => _mpi.AllreduceMax((float*)ptr, 1));
        }
        // Every rank agreed to stop: exiting with the stop's code (130) is then no failure.
        return _stopped = flag[0] > 0;
    }

    public void Barrier() => Guard("end-of-training barrier", _mpi.Barrier);

    public void Fail() => _failed = true;

    // ---- identical runs ----

    void CheckSame(RunFingerprint mine)
    {
        var parts = mine.Parts;
        var hashes = parts.SelectMany(p => SHA256.HashData(Encoding.UTF8.GetBytes(p.Text))).ToArray();
        int width = hashes.Length;
        var all = new byte[width * WorldSize];
        fixed (byte* send = hashes) fixed (byte* receive = all)
        {
            var (s, r) = ((nint)send, (nint)receive);
            Guard("comparison of the ranks' configuration", () => _mpi.Allgather((void*)s, (void*)r, width));
        }
        bool Differs(int rank, int part) => !all.AsSpan(rank * width + part * 32, 32).SequenceEqual(all.AsSpan(part * 32, 32));
        var differing = Enumerable.Range(0, parts.Count).Where(p => Enumerable.Range(1, WorldSize - 1).Any(r => Differs(r, p))).ToList();
        if (differing.Count == 0) return;

        // Every rank learns rank 0's text of each differing part, says where its own differs, and all ranks share that.
        const int Slot = 480;
        var note = new StringBuilder();
        foreach (int p in differing)
        {
            var theirs = BroadcastText(parts[p].Text);
            if (Rank != 0 && Differs(Rank, p)) note.Append(note.Length > 0 ? "; " : "").Append(parts[p].Name).Append(": ").Append(RunFingerprint.FirstDifference(parts[p].Text, theirs));
        }
        var mineNote = new byte[Slot];
        Encoding.UTF8.GetBytes(Truncate(note.ToString(), Slot / 4)).CopyTo(mineNote, 0);
        var notes = new byte[Slot * WorldSize];
        fixed (byte* send = mineNote) fixed (byte* receive = notes)
        {
            var (s, r) = ((nint)send, (nint)receive);
            Guard("exchange of the differences", () => _mpi.Allgather((void*)s, (void*)r, Slot));
        }
        var lines = Enumerable.Range(1, WorldSize - 1)
            .Select(r => (r, text: Encoding.UTF8.GetString(notes, r * Slot, Slot).TrimEnd('\0')))
            .Where(x => x.text.Length > 0)
            .Select(x => $"rank {x.r} differs from rank 0 in {x.text}");
        throw new DistributedException("the ranks of this data-parallel job do not run the same training: " + string.Join(" | ", lines) +
            ". Every rank must get the same config, model and data.");
    }

    static string Truncate(string s, int max) => s.Length <= max ? s : s[..max] + "…";

    string BroadcastText(string text)
    {
        var bytes = Encoding.UTF8.GetBytes(text);
        var lengthBox = new long[] { bytes.Length };
        fixed (long* lp = lengthBox)
        {
            var ptr = (nint)lp;
            Guard("broadcast of rank 0's configuration", () => _mpi.Bcast((void*)ptr, sizeof(long), 0));
        }
        long length = lengthBox[0];
        var buffer = Rank == 0 ? bytes : new byte[length];
        fixed (byte* p = buffer)
        {
            var ptr = (nint)p;
            Guard("broadcast of rank 0's configuration", () =>
            {
                for (long off = 0; off < length; off += MaxPiece) _mpi.Bcast((byte*)ptr + off, (int)Math.Min(MaxPiece, length - off), 0);
            });
        }
        return Encoding.UTF8.GetString(buffer);
    }

    // ---- buffers ----

    /// <summary>One float32 CPU buffer: <paramref name="pick"/> of each parameter in order (zeros of its size where it gives none), then <paramref name="extra"/>.</summary>
    static Tensor Pack(IReadOnlyList<Tensor> parameters, Func<Tensor, Tensor?> pick, float[] extra) =>
        cat(parameters.Select(p => pick(p) is { } t ? t.detach().reshape(-1).to(float32, CPU) : zeros(p.numel(), float32))
            .Append(tensor(extra)).ToArray()).contiguous();

    static void Unpack(Tensor flat, IReadOnlyList<Tensor> parameters, Action<int, Tensor, Tensor> apply)
    {
        long offset = 0;
        for (int i = 0; i < parameters.Count; i++)
        {
            var p = parameters[i];
            apply(i, p, flat.narrow(0, offset, p.numel()).view(p.shape));
            offset += p.numel();
        }
    }

    static void ForPieces(Tensor flat, Action<nint, int> call)
    {
        long count = flat.numel();
        var start = Quantization.Bnb4bit.Pointer<float>(flat);
        for (long off = 0; off < count; off += MaxPiece) call((nint)(start + off), (int)Math.Min(MaxPiece, count - off));
    }

    // ---- failure handling ----

    void Guard(string what, Action call)
    {
        Volatile.Write(ref _inFlightSince, Stopwatch.GetTimestamp());
        Volatile.Write(ref _inFlight, what);
        try { call(); }
        catch (DistributedException e) { _failed = true; throw new DistributedException($"rank {Rank}: {what}: {e.Message}"); }
        finally { Volatile.Write(ref _inFlight, null); }
    }

    void Watch()
    {
        while (!_done)
        {
            Thread.Sleep(500);
            var what = Volatile.Read(ref _inFlight);
            if (what is null || Stopwatch.GetElapsedTime(Volatile.Read(ref _inFlightSince)) < _timeout) continue;
            Console.Error.WriteLine($"error: rank {Rank}: no answer from the other ranks for {_timeout.TotalSeconds:0} s in the {what}; " +
                $"a rank has probably died or hangs. Ending the job ({TimeoutVariable} sets this limit).");
            Console.Error.Flush();
            _mpi.Abort(1);
            Environment.Exit(1);
        }
    }

    void Exit()
    {
        _done = true;
        if (_mpi.Finalized) return;
        // A rank that failed must not wait in MPI_Finalize for ranks that wait in a collective for it.
        if (_failed || Environment.ExitCode != 0 && !_stopped) _mpi.Abort(1);
        else _mpi.Finalize();
    }
}
