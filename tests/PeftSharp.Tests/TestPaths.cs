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
    // (the tool test alone unpacks ~1 GB of libtorch).
    static readonly Lazy<string> TempRoot = new(() =>
    {
        var root = Path.Combine(Path.GetTempPath(), "peftsharp-tests", $"run-{Environment.ProcessId}");
        Directory.CreateDirectory(root);
        AppDomain.CurrentDomain.ProcessExit += (_, _) => { try { Directory.Delete(root, true); } catch (Exception e) when (e is IOException or UnauthorizedAccessException) { } };
        return root;
    });

    public static string TempDir()
    {
        var d = Path.Combine(TempRoot.Value, Guid.NewGuid().ToString("N"));
        Directory.CreateDirectory(d);
        return d;
    }
}
