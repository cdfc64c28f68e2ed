namespace PeftSharp.IO;

/// <summary>File sizes that follow symlinks: a Hugging Face cache snapshot's files are links into <c>blobs/</c>,
/// and <see cref="FileInfo.Length"/> of a link is the length of the link itself.</summary>
public static class FileSizes
{
    public static long Of(string path)
    {
        var info = new FileInfo(path);
        if (info.LinkTarget is null) return info.Length;
        var target = info.ResolveLinkTarget(returnFinalTarget: true) as FileInfo
            ?? throw new PeftFormatException(path, "symlink does not point to a file");
        if (!target.Exists) throw new PeftFormatException(path, $"symlink target '{target.FullName}' does not exist");
        return target.Length;
    }

    /// <summary>Total size of the files directly in <paramref name="dir"/> (optionally matching a pattern), links followed.</summary>
    public static long OfFolder(string dir, string pattern = "*") => Directory.EnumerateFiles(dir, pattern).Sum(Of);
}
