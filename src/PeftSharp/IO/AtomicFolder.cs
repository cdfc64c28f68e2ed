using System.Diagnostics;
using System.Runtime.InteropServices;

namespace PeftSharp.IO;

/// <summary>
/// Writes a whole output folder (merged or quantized model, adapter, checkpoint) so that a kill at any instant leaves
/// either the old complete folder or the new complete one: the new folder is built in a temporary sibling, then
/// swapped in. On Linux the swap is one <c>renameat2(RENAME_EXCHANGE)</c>; elsewhere two renames, with the old folder
/// moved back on the next run if a kill fell between them. Nothing of the old folder survives into the new one
/// (no stale shard index) unless <c>keep</c> names it; temporary siblings left by a killed run are removed on the next
/// write to the same folder.
/// </summary>
public static class AtomicFolder
{
    const string TempTag = ".peft-tmp-", OldTag = ".peft-old-";

    /// <summary>
    /// Builds <paramref name="dir"/> anew: <paramref name="write"/> fills the (empty) folder it is given; when it returns,
    /// that folder replaces <paramref name="dir"/>. Entries of the old folder for which <paramref name="keep"/> is true
    /// (e.g. a training run's checkpoint-N folders next to its final adapter) are carried over unless the writer made
    /// an entry of the same name.
    /// </summary>
    public static void Write(string dir, Action<string> write, Func<string, bool>? keep = null)
    {
        var full = Path.TrimEndingDirectorySeparator(Path.GetFullPath(dir));
        var parent = Path.GetDirectoryName(full) ?? throw new PeftSharpException($"{dir}: cannot replace a root folder");
        var name = Path.GetFileName(full);
        // Inside a folder that is itself still being built nothing is visible yet: write in place (no nested temporaries).
        if (full.Split(Path.DirectorySeparatorChar).Any(part => part.StartsWith('.') && part.Contains(TempTag, StringComparison.Ordinal)))
        {
            Directory.CreateDirectory(full);
            write(full);
            return;
        }
        Directory.CreateDirectory(parent);
        Recover(parent, name, keep);
        if (File.Exists(full)) throw new PeftFormatException(full, "is a file; expected a folder (or nothing) to write into");

        var tmp = Path.Combine(parent, $".{name}{TempTag}{Environment.ProcessId}-{Guid.NewGuid():N}");
        Directory.CreateDirectory(tmp);
        try
        {
            write(tmp);
            if (keep is not null && Directory.Exists(full))
                foreach (var entry in Directory.EnumerateFileSystemEntries(full).Select(Path.GetFileName).Where(e => keep(e!)).ToList())
                    MoveEntry(Path.Combine(full, entry!), Path.Combine(tmp, entry!));
            Swap(tmp, full, parent, name);
        }
        finally
        {
            // Either the writer failed (tmp is the unfinished new folder) or the swap left the old folder under tmp's name.
            if (Directory.Exists(tmp))
            {
                if (keep is not null) RestoreKept(tmp, full, keep);
                Directory.Delete(tmp, recursive: true);
            }
        }
    }

    static void Swap(string tmp, string full, string parent, string name)
    {
        if (!Directory.Exists(full)) { Directory.Move(tmp, full); return; }
        if (OperatingSystem.IsLinux() && Exchange(tmp, full)) return; // tmp now holds the old folder
        var old = Path.Combine(parent, $".{name}{OldTag}{Environment.ProcessId}-{Guid.NewGuid():N}");
        Directory.Move(full, old);
        Directory.Move(tmp, full);
        Directory.Delete(old, recursive: true);
    }

    static void MoveEntry(string from, string to)
    {
        if (File.Exists(to) || Directory.Exists(to)) return; // the writer's own entry wins
        if (Directory.Exists(from)) Directory.Move(from, to); else File.Move(from, to);
    }

    // Kept entries that had been moved into an unfinished (or swapped-out) temporary folder go back where they were.
    static void RestoreKept(string tmp, string full, Func<string, bool> keep)
    {
        if (!Directory.Exists(full)) return;
        foreach (var entry in Directory.EnumerateFileSystemEntries(tmp).Select(Path.GetFileName).Where(e => keep(e!)).ToList())
            MoveEntry(Path.Combine(tmp, entry!), Path.Combine(full, entry!));
    }

    /// <summary>
    /// Cleans what a killed writer left next to <paramref name="dir"/> (unfinished or swapped-out folders; an old folder
    /// moved aside goes back). <see cref="Write"/> does this itself; call it before reading a folder a killed run may have been writing.
    /// </summary>
    public static void Recover(string dir, Func<string, bool>? keep = null)
    {
        var full = Path.TrimEndingDirectorySeparator(Path.GetFullPath(dir));
        if (Path.GetDirectoryName(full) is { } parent && Directory.Exists(parent)) Recover(parent, Path.GetFileName(full), keep);
    }

    /// <summary>Recovers every folder inside <paramref name="parent"/> that a killed writer left temporary siblings of (e.g. checkpoint-N).</summary>
    public static void CleanStale(string parent)
    {
        if (!Directory.Exists(parent)) return;
        var names = Directory.EnumerateDirectories(parent, ".*.peft-*").Select(Path.GetFileName)
            .Select(n => n!.IndexOf(".peft-", StringComparison.Ordinal) is var i and > 1 ? n[1..i] : null)
            .OfType<string>().Distinct().ToList();
        foreach (var name in names) Recover(parent, name, null);
    }

    static void Recover(string parent, string name, Func<string, bool>? keep)
    {
        var full = Path.Combine(parent, name);
        // Old folders first: one moved back into place then receives the kept entries of the unfinished new one.
        var siblings = Directory.EnumerateDirectories(parent, $".{name}.peft-*").OrderBy(s => s.Contains(OldTag, StringComparison.Ordinal) ? 0 : 1).ToList();
        foreach (var sibling in siblings)
        {
            var rest = Path.GetFileName(sibling)[(name.Length + 1)..];
            bool isOld = rest.StartsWith(OldTag, StringComparison.Ordinal);
            if (!isOld && !rest.StartsWith(TempTag, StringComparison.Ordinal)) continue;
            if (OwnerAlive(rest[(isOld ? OldTag : TempTag).Length..])) continue;
            if (isOld && !Directory.Exists(full)) { Directory.Move(sibling, full); continue; } // killed between the two renames
            if (keep is not null) RestoreKept(sibling, full, keep);
            Directory.Delete(sibling, recursive: true);
        }
    }

    static bool OwnerAlive(string pidAndGuid)
    {
        var dash = pidAndGuid.IndexOf('-');
        if (dash <= 0 || !int.TryParse(pidAndGuid[..dash], out var pid)) return false;
        if (pid == Environment.ProcessId) return true;
        try { using var p = Process.GetProcessById(pid); return !p.HasExited; }
        catch (ArgumentException) { return false; }
        catch (InvalidOperationException) { return false; }
    }

    [DllImport("libc", SetLastError = true, CharSet = CharSet.Ansi)]
    static extern int renameat2(int olddirfd, string oldpath, int newdirfd, string newpath, uint flags);

    const int AtFdCwd = -100;
    const uint RenameExchange = 2;

    // False when the libc or the file system lacks it (old glibc, some network file systems): the caller falls back.
    static bool Exchange(string a, string b)
    {
        try { return renameat2(AtFdCwd, a, AtFdCwd, b, RenameExchange) == 0; }
        catch (EntryPointNotFoundException) { return false; }
        catch (DllNotFoundException) { return false; }
    }
}
