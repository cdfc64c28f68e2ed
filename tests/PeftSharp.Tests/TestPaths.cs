namespace PeftSharp.Tests;

/// <summary>Locates test data copied next to the test assembly, and the shared fixture folder when present.</summary>
public static class TestPaths
{
    public static string Data(params string[] parts) =>
        Path.Combine(new[] { AppContext.BaseDirectory, "TestData" }.Concat(parts).ToArray());

    public static string Model(string name) => Data("models", name);

    /// <summary>../shared/fixtures from the repository root, or null (users' clones do not have it).</summary>
    public static string? SharedFixtures()
    {
        for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir is not null; dir = dir.Parent)
        {
            var candidate = Path.Combine(dir.FullName, "shared", "fixtures");
            if (Directory.Exists(candidate)) return candidate;
        }
        return null;
    }

    /// <summary>A file or folder of the repository (samples/, docs/), found upwards from the test assembly.</summary>
    public static string RepoFile(string relative)
    {
        for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir is not null; dir = dir.Parent)
        {
            var candidate = Path.Combine(dir.FullName, relative);
            if (File.Exists(candidate) || Directory.Exists(candidate)) return candidate;
        }
        throw new FileNotFoundException($"{relative} not found above {AppContext.BaseDirectory}");
    }

    // One folder per test process, removed when the process exits, so repeated runs do not fill the disk
    // (the tool test alone unpacks ~1 GB of libtorch). The test host is sometimes ended before ProcessExit runs,
    // so each run also removes the folders of earlier runs whose process is gone: 56 left-behind runs (28 GB) once
    // filled the disk CI shares.
    static readonly Lazy<string> TempRoot = new(() =>
    {
        var parent = Path.Combine(Path.GetTempPath(), "peftsharp-tests");
        RemoveFinishedRuns(parent);
        var root = Path.Combine(parent, $"run-{Environment.ProcessId}");
        Directory.CreateDirectory(root);
        AppDomain.CurrentDomain.ProcessExit += (_, _) => TryDelete(root);
        return root;
    });

    static void RemoveFinishedRuns(string parent)
    {
        if (!Directory.Exists(parent)) return;
        foreach (var dir in Directory.GetDirectories(parent))
        {
            // Untouched for an hour as well: a run in another PID namespace sharing /tmp looks "gone" from here,
            // and a live run makes a folder in its root every few seconds.
            var name = Path.GetFileName(dir);
            bool gone = !name.StartsWith("run-", StringComparison.Ordinal) || !int.TryParse(name.AsSpan(4), out var pid) || !IsRunning(pid);
            if (gone && Directory.GetLastWriteTimeUtc(dir) < DateTime.UtcNow.AddHours(-1)) TryDelete(dir);
        }
    }

    static bool IsRunning(int pid)
    {
        try { using var p = System.Diagnostics.Process.GetProcessById(pid); return !p.HasExited; }
        catch (ArgumentException) { return false; }
        catch (InvalidOperationException) { return false; }
    }

    /// <summary>Removes a folder a test no longer needs; a failure to remove it never fails the test.</summary>
    public static void TryDelete(string dir)
    {
        try { Directory.Delete(dir, true); } catch (Exception e) when (e is IOException or UnauthorizedAccessException) { }
    }

    public static string TempDir()
    {
        var d = Path.Combine(TempRoot.Value, Guid.NewGuid().ToString("N"));
        Directory.CreateDirectory(d);
        return d;
    }
}
