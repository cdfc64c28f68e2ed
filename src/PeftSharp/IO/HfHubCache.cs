using System.Text.RegularExpressions;

namespace PeftSharp.IO;

/// <summary>
/// Resolves what a user passes as a model or adapter: a local folder (possibly a Hugging Face cache snapshot whose
/// files are symlinks into <c>blobs/</c>), or a repo id <c>Org/Name</c> with an optional <c>@revision</c>, looked up
/// offline in the Hugging Face cache the way huggingface_hub's <c>try_to_load_from_cache</c> does:
/// <c>CACHE/models--Org--Name/refs/REVISION</c> names a commit, whose files are in <c>snapshots/COMMIT/</c>;
/// a revision that is not a ref is taken as a commit hash.
/// </summary>
public static class HfHubCache
{
    public const string DefaultRevision = "main";

    // huggingface_hub's REPO_ID_REGEX: an optional namespace, then 1-96 of [\w\-.], bounded by word characters.
    static readonly Regex RepoId = new(@"^(\b[\w\-.]+\b/)?\b[\w\-.]{1,96}\b$", RegexOptions.CultureInvariant, TimeSpan.FromSeconds(1));

    /// <summary>
    /// The hub cache folder, as huggingface_hub's constants: HF_HUB_CACHE, else the legacy HUGGINGFACE_HUB_CACHE,
    /// else HF_HOME/hub, else XDG_CACHE_HOME/huggingface/hub, else ~/.cache/huggingface/hub (~ and $VARS expanded).
    /// </summary>
    public static string CacheDir()
    {
        var home = Expand(Env("HF_HOME") ?? Path.Combine(Env("XDG_CACHE_HOME") ?? Path.Combine(UserHome(), ".cache"), "huggingface"));
        return Expand(Env("HF_HUB_CACHE") ?? Env("HUGGINGFACE_HUB_CACHE") ?? Path.Combine(home, "hub"));
    }

    /// <summary>True when <paramref name="value"/> has the shape of a repo id (<c>name</c> or <c>org/name</c>, optional <c>@revision</c>).</summary>
    public static bool LooksLikeRepoId(string value)
    {
        var (id, _) = Split(value);
        return RepoId.IsMatch(id) && !id.Contains("--") && !id.Contains("..") && !id.EndsWith(".git", StringComparison.Ordinal);
    }

    /// <summary>
    /// A local folder for <paramref name="pathOrId"/>: the folder itself when it exists, else the cached snapshot of the
    /// repo id. Throws a <see cref="PeftFormatException"/> that lists every place it looked.
    /// </summary>
    /// <param name="what">"model" or "adapter", for the message.</param>
    public static string ResolveFolder(string pathOrId, string what = "model")
    {
        if (string.IsNullOrWhiteSpace(pathOrId)) throw new PeftConfigException($"no {what} folder or repo id given");
        if (Directory.Exists(pathOrId)) return pathOrId;
        if (File.Exists(pathOrId)) throw new PeftFormatException(pathOrId, $"is a file; expected a {what} folder");
        if (!LooksLikeRepoId(pathOrId)) throw new PeftFormatException(pathOrId, $"{what} folder not found");
        var looked = new List<string> { $"{Path.GetFullPath(pathOrId)} (no such folder)" };
        var snapshot = TryResolve(pathOrId, CacheDir(), looked);
        if (snapshot is not null) return snapshot;
        throw new PeftFormatException(pathOrId, $"{what} folder not found, nor this repo id in the Hugging Face cache; looked in: {string.Join("; ", looked)}; " +
            $"download it on a connected machine (huggingface-cli download {Split(pathOrId).Id}) into that cache, or set HF_HUB_CACHE / HF_HOME");
    }

    /// <summary>The snapshot folder of a repo id in <paramref name="cacheDir"/>, or null; each miss is added to <paramref name="looked"/>.</summary>
    public static string? TryResolve(string repoIdWithRevision, string cacheDir, List<string>? looked = null)
    {
        var (id, revision) = Split(repoIdWithRevision);
        if (revision.Contains("..")) { looked?.Add($"revision '{revision}' (must not contain '..')"); return null; }
        var repo = Path.Combine(cacheDir, "models--" + id.Replace("/", "--"));
        if (!Directory.Exists(repo)) { looked?.Add($"{repo} (no such folder)"); return null; }

        var refFile = Path.Combine(repo, "refs", revision);
        string commit = revision;
        if (File.Exists(refFile)) commit = File.ReadAllText(refFile).Trim();
        var snapshots = Path.Combine(repo, "snapshots");
        // A commit must be a folder name in snapshots/, never a path that walks out of it.
        var snapshot = Path.Combine(snapshots, commit);
        if (commit.Length == 0 || commit.IndexOfAny(['/', '\\']) >= 0 || commit is "." or ".." || !Directory.Exists(snapshot))
        {
            var why = File.Exists(refFile) ? $"refs/{revision} names '{commit}', which has no snapshot" : $"no refs/{revision} and no snapshot named '{revision}'";
            looked?.Add($"{repo} ({why})");
            return null;
        }
        return snapshot;
    }

    static (string Id, string Revision) Split(string value)
    {
        int at = value.LastIndexOf('@');
        return at > 0 && at < value.Length - 1 ? (value[..at], value[(at + 1)..]) : (value, DefaultRevision);
    }

    static string? Env(string name) => Environment.GetEnvironmentVariable(name) is { Length: > 0 } v ? v : null;

    static string UserHome() => Environment.GetFolderPath(Environment.SpecialFolder.UserProfile);

    // Python's os.path.expandvars: $VAR and ${VAR}; unknown variables stay as written.
    static readonly Regex EnvVar = new(@"\$(\w+|\{[^}]*\})", RegexOptions.CultureInvariant, TimeSpan.FromSeconds(1));

    static string Expand(string path)
    {
        path = EnvVar.Replace(path, m => Environment.GetEnvironmentVariable(m.Groups[1].Value.Trim('{', '}')) ?? m.Value);
        if (path == "~") return UserHome();
        return path.StartsWith("~/", StringComparison.Ordinal) ? Path.Combine(UserHome(), path[2..]) : path;
    }
}
