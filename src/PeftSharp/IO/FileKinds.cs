using System.Runtime.InteropServices;

namespace PeftSharp.IO;

/// <summary>
/// Whether a path is a regular file. .NET reports a FIFO, socket or device as an ordinary file, and opening a
/// FIFO blocks until a writer appears; whoever reads files a client named asks this first. Linux asks statx
/// (its struct has one layout on every architecture); elsewhere every existing non-folder counts as regular.
/// </summary>
public static class FileKinds
{
    const int AtFdCwd = -100, StatxType = 0x1;
    const ushort TypeMask = 0xF000, Regular = 0x8000;

    [DllImport("libc", EntryPoint = "statx", SetLastError = true)]
    static extern unsafe int Statx(int dirFd, [MarshalAs(UnmanagedType.LPUTF8Str)] string path, int flags, uint mask, byte* buffer);

    /// <summary>True for a regular file (following symbolic links), false for anything else or a missing path.</summary>
    public static unsafe bool IsRegularFile(string path)
    {
        if (!OperatingSystem.IsLinux()) return File.Exists(path);
        byte* buffer = stackalloc byte[256];
        try
        {
            if (Statx(AtFdCwd, path, 0, StatxType, buffer) != 0) return false;
        }
        catch (EntryPointNotFoundException) { return File.Exists(path); }
        // struct statx: u32 mask, u32 blksize, u64 attributes, u32 nlink, u32 uid, u32 gid, u16 mode.
        ushort mode = *(ushort*)(buffer + 28);
        return (mode & TypeMask) == Regular;
    }

    /// <summary>Throws <see cref="PeftFormatException"/> naming the first entry of <paramref name="dir"/> that is neither a regular file nor a folder.</summary>
    public static void RequireRegularFiles(string dir)
    {
        foreach (var entry in Directory.EnumerateFileSystemEntries(dir))
            if (!Directory.Exists(entry) && !IsRegularFile(entry))
                throw new PeftFormatException(entry, "is not a regular file (a FIFO, socket, device or dangling link); refusing to read it");
    }
}
