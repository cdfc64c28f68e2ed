using System.Runtime.InteropServices;

namespace PeftSharp.Training.Distributed;

/// <summary>
/// The few MPI calls data-parallel training needs, bound to Open MPI's <c>libmpi.so.40</c> (Debian's openmpi 4.x and 5.x).
/// The MPI.NET package binds MS-MPI (msmpi.dll, integer handles), which Open MPI's pointer handles do not fit, hence
/// this layer. In Open MPI the predefined handles (MPI_COMM_WORLD, MPI_FLOAT, MPI_SUM, ...) are the addresses of
/// exported globals (<c>ompi_mpi_comm_world</c>, ...), so they are looked up once the library is loaded.
/// </summary>
internal sealed unsafe class OpenMpi
{
    public const string Library = "libmpi.so.40";
    /// <summary>Another libmpi to load (a file name or path), e.g. an Open MPI installed outside the library path.</summary>
    public const string LibraryVariable = "PEFTSHARP_MPI_LIBRARY";
    const int Success = 0, ThreadMultiple = 3, MaxErrorString = 256;

    readonly nint _world, _float, _byte, _sum, _max;
    readonly delegate* unmanaged<int*, nint*, int, int*, int> _initThread;
    readonly delegate* unmanaged<int*, int> _initialized, _finalized;
    readonly delegate* unmanaged<int> _finalize;
    readonly delegate* unmanaged<nint, int*, int> _commRank, _commSize;
    readonly delegate* unmanaged<nint, nint, int> _setErrhandler;
    readonly delegate* unmanaged<nint, void*, int, nint, nint, nint, int> _allreduce;
    readonly delegate* unmanaged<void*, int, nint, int, nint, int> _bcast;
    readonly delegate* unmanaged<void*, int, nint, void*, int, nint, nint, int> _allgather;
    readonly delegate* unmanaged<nint, int> _barrier;
    readonly delegate* unmanaged<nint, int, int> _abort;
    readonly delegate* unmanaged<int, byte*, int*, int> _errorString;

    [DllImport("libc", EntryPoint = "dlopen")] static extern nint DlOpen(string file, int flags);
    [DllImport("libc", EntryPoint = "dlerror")] static extern nint DlError();
    const int RtldNow = 2, RtldGlobal = 0x100;

    OpenMpi(nint lib, string library)
    {
        nint Sym(string name) => NativeLibrary.TryGetExport(lib, name, out var address) ? address
            : throw new PeftPlatformException($"{library} was loaded but has no '{name}': it is not Open MPI 4.x/5.x (MPICH and others are not supported). " + Install);
        _world = Sym("ompi_mpi_comm_world"); _float = Sym("ompi_mpi_float"); _byte = Sym("ompi_mpi_byte");
        _sum = Sym("ompi_mpi_op_sum"); _max = Sym("ompi_mpi_op_max");
        ErrorsReturn = Sym("ompi_mpi_errors_return");
        _initThread = (delegate* unmanaged<int*, nint*, int, int*, int>)Sym("MPI_Init_thread");
        _initialized = (delegate* unmanaged<int*, int>)Sym("MPI_Initialized");
        _finalized = (delegate* unmanaged<int*, int>)Sym("MPI_Finalized");
        _finalize = (delegate* unmanaged<int>)Sym("MPI_Finalize");
        _commRank = (delegate* unmanaged<nint, int*, int>)Sym("MPI_Comm_rank");
        _commSize = (delegate* unmanaged<nint, int*, int>)Sym("MPI_Comm_size");
        _setErrhandler = (delegate* unmanaged<nint, nint, int>)Sym("MPI_Comm_set_errhandler");
        _allreduce = (delegate* unmanaged<nint, void*, int, nint, nint, nint, int>)Sym("MPI_Allreduce");
        _bcast = (delegate* unmanaged<void*, int, nint, int, nint, int>)Sym("MPI_Bcast");
        _allgather = (delegate* unmanaged<void*, int, nint, void*, int, nint, nint, int>)Sym("MPI_Allgather");
        _barrier = (delegate* unmanaged<nint, int>)Sym("MPI_Barrier");
        _abort = (delegate* unmanaged<nint, int, int>)Sym("MPI_Abort");
        _errorString = (delegate* unmanaged<int, byte*, int*, int>)Sym("MPI_Error_string");
    }

    nint ErrorsReturn { get; }

    const string Install = "Install Open MPI with scripts/setup.sh --mpi (or apt-get install openmpi-bin libopenmpi-dev), or run without mpirun.";

    /// <summary>
    /// Loads libmpi (<see cref="LibraryVariable"/> or <see cref="Library"/>; RTLD_GLOBAL: Open MPI's plugins resolve
    /// their symbols against it) or says in one line why it cannot and what to install.
    /// </summary>
    public static OpenMpi Load(string? library = null)
    {
        library ??= Environment.GetEnvironmentVariable(LibraryVariable) is { Length: > 0 } chosen ? chosen : Library;
        var lib = DlOpen(library, RtldNow | RtldGlobal);
        if (lib == 0)
        {
            var why = Marshal.PtrToStringAnsi(DlError()) ?? "unknown reason";
            throw new PeftPlatformException($"this process is one rank of a data-parallel job (a launcher such as mpirun set its variables) but Open MPI's {library} " +
                $"cannot be loaded ({why}). " + Install);
        }
        return new OpenMpi(lib, library);
    }

    /// <summary>MPI_Init_thread (asks for MPI_THREAD_MULTIPLE: the watchdog may abort from its own thread) and MPI_ERRORS_RETURN on the world.</summary>
    public void Init()
    {
        int flag;
        Check(_initialized(&flag), "MPI_Initialized");
        if (flag == 0)
        {
            int provided, argc = 0; nint argv = 0;
            Check(_initThread(&argc, &argv, ThreadMultiple, &provided), "MPI_Init_thread");
        }
        // Failures come back as return codes (and so as exceptions naming the call) instead of killing the process silently.
        Check(_setErrhandler(_world, ErrorsReturn), "MPI_Comm_set_errhandler");
    }

    public int Rank { get { int r; Check(_commRank(_world, &r), "MPI_Comm_rank"); return r; } }
    public int Size { get { int s; Check(_commSize(_world, &s), "MPI_Comm_size"); return s; } }

    public bool Finalized { get { int f; _finalized(&f); return f != 0; } }

    /// <summary>In-place sum over every rank of <paramref name="count"/> floats at <paramref name="data"/>.</summary>
    public void AllreduceSum(float* data, int count) => Check(_allreduce(1 /* MPI_IN_PLACE */, data, count, _float, _sum, _world), "MPI_Allreduce");

    /// <summary>In-place elementwise max over every rank of <paramref name="count"/> floats.</summary>
    public void AllreduceMax(float* data, int count) => Check(_allreduce(1, data, count, _float, _max, _world), "MPI_Allreduce");

    public void Bcast(void* data, int bytes, int root) => Check(_bcast(data, bytes, _byte, root, _world), "MPI_Bcast");

    public void Allgather(void* send, void* receive, int bytesPerRank) =>
        Check(_allgather(send, bytesPerRank, _byte, receive, bytesPerRank, _byte, _world), "MPI_Allgather");

    public void Barrier() => Check(_barrier(_world), "MPI_Barrier");

    public void Finalize() => _finalize();

    public void Abort(int code) => _abort(_world, code);

    void Check(int rc, string call)
    {
        if (rc == Success) return;
        var buffer = stackalloc byte[MaxErrorString + 1];
        int length = 0;
        string text = _errorString(rc, buffer, &length) == Success ? Marshal.PtrToStringAnsi((nint)buffer, length) : $"error {rc}";
        throw new DistributedException($"{call} failed: {text}. Another rank has probably stopped; the job cannot continue.");
    }
}
