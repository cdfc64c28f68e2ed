using System.Security.Cryptography;
using System.Text.Json;
using PeftSharp.IO;
using PeftSharp.Models;
using PeftSharp.Tests.Cli;
using PeftSharp.Tokenization;
using PeftSharp.Tuners;

namespace PeftSharp.Tests.IO;

/// <summary>
/// Model and adapter folders laid out as huggingface_hub's cache: files in <c>blobs/</c> named by their hash,
/// <c>snapshots/COMMIT/</c> holding relative symlinks to them, <c>refs/main</c> naming the commit.
/// </summary>
public class HfHubCacheTests : IDisposable
{
    const string Commit = "0123456789abcdef0123456789abcdef01234567";
    const string OtherCommit = "fedcba9876543210fedcba9876543210fedcba98";
    readonly string _root = TestPaths.TempDir();
    readonly Dictionary<string, string?> _savedEnv = new();

    public void Dispose()
    {
        foreach (var (k, v) in _savedEnv) Environment.SetEnvironmentVariable(k, v);
        Directory.Delete(_root, recursive: true);
    }

    void SetEnv(string name, string? value)
    {
        if (!_savedEnv.ContainsKey(name)) _savedEnv[name] = Environment.GetEnvironmentVariable(name);
        Environment.SetEnvironmentVariable(name, value);
    }

    /// <summary>Copies <paramref name="source"/>'s files into the cache as blobs + symlinked snapshot; returns the snapshot folder.</summary>
    static string AddToCache(string cache, string repoId, string source, string commit, string? refName = "main")
    {
        var repo = Path.Combine(cache, "models--" + repoId.Replace("/", "--"));
        var blobs = Directory.CreateDirectory(Path.Combine(repo, "blobs")).FullName;
        var snapshot = Directory.CreateDirectory(Path.Combine(repo, "snapshots", commit)).FullName;
        foreach (var file in Directory.EnumerateFiles(source))
        {
            var hash = Convert.ToHexStringLower(SHA256.HashData(File.ReadAllBytes(file)));
            var blob = Path.Combine(blobs, hash);
            if (!File.Exists(blob)) File.Copy(file, blob);
            File.CreateSymbolicLink(Path.Combine(snapshot, Path.GetFileName(file)), Path.Combine("..", "..", "blobs", hash));
        }
        if (refName is not null)
        {
            Directory.CreateDirectory(Path.Combine(repo, "refs"));
            File.WriteAllText(Path.Combine(repo, "refs", refName), commit); // huggingface_hub writes the hash without a newline
        }
        return snapshot;
    }

    string Cache => Path.Combine(_root, "hub");

    [Fact]
    public void Snapshot_folder_of_symlinks_loads_like_the_original()
    {
        var snapshot = AddToCache(Cache, "peft-tests/llama-tiny", TestPaths.Model("llama-tiny"), Commit);
        var weights = Path.Combine(snapshot, Checkpoint.SingleFile);
        Assert.NotNull(new FileInfo(weights).LinkTarget);
        Assert.Equal(new FileInfo(Path.Combine(TestPaths.Model("llama-tiny"), Checkpoint.SingleFile)).Length, FileSizes.Of(weights));

        using var original = AutoModel.FromPretrained(TestPaths.Model("llama-tiny"));
        using var cached = AutoModel.FromPretrained(snapshot);
        foreach (var (name, p) in original.state_dict())
            Assert.True(p.equal(cached.state_dict()[name]).all().item<bool>(), name);
        var tokenizerSnapshot = AddToCache(Cache, "Qwen/Qwen3-tokenizer", TestPaths.Data("tokenizers", "qwen3"), Commit);
        Assert.Equal(HfTokenizer.FromFolder(TestPaths.Data("tokenizers", "qwen3")).Encode("hello world"), HfTokenizer.FromFolder(tokenizerSnapshot).Encode("hello world"));
    }

    [Fact]
    public void Repo_id_resolves_through_refs_main_in_HF_HUB_CACHE()
    {
        var snapshot = AddToCache(Cache, "peft-tests/llama-tiny", TestPaths.Model("llama-tiny"), Commit);
        SetEnv("HF_HUB_CACHE", Cache);
        Assert.Equal(snapshot, Path.GetFullPath(HfHubCache.ResolveFolder("peft-tests/llama-tiny")));
        Assert.Equal(snapshot, Path.GetFullPath(HfHubCache.ResolveFolder($"peft-tests/llama-tiny@{Commit}")));
    }

    [Fact]
    public void Cache_folder_follows_huggingface_hub_precedence()
    {
        SetEnv("HF_HUB_CACHE", null);
        SetEnv("HUGGINGFACE_HUB_CACHE", null);
        SetEnv("XDG_CACHE_HOME", Path.Combine(_root, "xdg"));
        SetEnv("HF_HOME", null);
        Assert.Equal(Path.Combine(_root, "xdg", "huggingface", "hub"), HfHubCache.CacheDir());
        SetEnv("PEFT_TEST_HOME", _root);
        SetEnv("HF_HOME", "$PEFT_TEST_HOME/hf");
        Assert.Equal(Path.Combine(_root, "hf", "hub"), HfHubCache.CacheDir());
        SetEnv("HUGGINGFACE_HUB_CACHE", Path.Combine(_root, "legacy"));
        Assert.Equal(Path.Combine(_root, "legacy"), HfHubCache.CacheDir());
        SetEnv("HF_HUB_CACHE", Path.Combine(_root, "new"));
        Assert.Equal(Path.Combine(_root, "new"), HfHubCache.CacheDir());
    }

    [Fact]
    public void Revision_picks_its_ref_or_commit_and_HF_HOME_is_used()
    {
        var hfHome = Path.Combine(_root, "home");
        AddToCache(Path.Combine(hfHome, "hub"), "peft-tests/llama-tiny", TestPaths.Model("llama-tiny"), Commit);
        var v2 = AddToCache(Path.Combine(hfHome, "hub"), "peft-tests/llama-tiny", TestPaths.Model("qwen2-tiny"), OtherCommit, refName: "v2");
        SetEnv("HF_HUB_CACHE", null);
        SetEnv("HUGGINGFACE_HUB_CACHE", null);
        SetEnv("HF_HOME", hfHome);
        Assert.Equal(v2, Path.GetFullPath(HfHubCache.ResolveFolder("peft-tests/llama-tiny@v2")));
        Assert.Equal("qwen2", AutoModel.LoadConfig("peft-tests/llama-tiny@v2").ModelType);
        Assert.Equal("llama", AutoModel.LoadConfig("peft-tests/llama-tiny").ModelType);
    }

    [Fact]
    public void Missing_repo_lists_every_place_it_looked()
    {
        AddToCache(Cache, "peft-tests/llama-tiny", TestPaths.Model("llama-tiny"), Commit, refName: null);
        SetEnv("HF_HUB_CACHE", Cache);
        var e = Assert.Throws<PeftFormatException>(() => HfHubCache.ResolveFolder("peft-tests/absent"));
        Assert.Contains(Path.Combine(Cache, "models--peft-tests--absent") + " (no such folder)", e.Message);
        Assert.Contains(Path.GetFullPath("peft-tests/absent") + " (no such folder)", e.Message);
        Assert.Contains("huggingface-cli download peft-tests/absent", e.Message);

        // The repo is cached, but no ref names "main" (downloaded by commit only).
        e = Assert.Throws<PeftFormatException>(() => AutoModel.FromPretrained("peft-tests/llama-tiny"));
        Assert.Contains("no refs/main and no snapshot named 'main'", e.Message);
        e = Assert.Throws<PeftFormatException>(() => HfHubCache.ResolveFolder("peft-tests/llama-tiny@../../x"));
        Assert.Contains("must not contain '..'", e.Message);
    }

    [Fact]
    public void Adapter_repo_id_loads_onto_a_cached_model_and_the_cli_uses_both()
    {
        AddToCache(Cache, "peft-tests/llama-tiny", TestPaths.Model("llama-tiny"), Commit);
        var adapterSource = TestPaths.Data("adapters", "llama-tiny", "lora_qv");
        AddToCache(Cache, "peft-tests/llama-tiny-lora", adapterSource, OtherCommit);
        SetEnv("HF_HUB_CACHE", Cache);

        using var peft = PeftModel.FromPretrained(AutoModel.FromPretrained("peft-tests/llama-tiny"), "peft-tests/llama-tiny-lora");
        using var direct = PeftModel.FromPretrained(AutoModel.FromPretrained(TestPaths.Model("llama-tiny")), adapterSource);
        foreach (var (name, p) in direct.Model.state_dict())
            Assert.True(p.equal(peft.Model.state_dict()[name]).all().item<bool>(), name);

        var (code, stdout, stderr) = CliRunner.Run("generate", "--model", "peft-tests/llama-tiny", "--adapter", "peft-tests/llama-tiny-lora",
            "--input-ids", "226 3 181 83", "--max-new-tokens", "4", "--json");
        Assert.True(code == 0, stderr);
        var (code2, stdout2, _) = CliRunner.Run("generate", "--model", TestPaths.Model("llama-tiny"), "--adapter", adapterSource,
            "--input-ids", "226 3 181 83", "--max-new-tokens", "4", "--json");
        Assert.Equal(0, code2);
        Assert.Equal(JsonDocument.Parse(stdout2).RootElement.GetProperty("rows").GetRawText(), JsonDocument.Parse(stdout).RootElement.GetProperty("rows").GetRawText());

        (code, stdout, stderr) = CliRunner.Run("inspect-adapter", "peft-tests/llama-tiny-lora", "--model", "peft-tests/llama-tiny");
        Assert.True(code == 0, stderr);
        Assert.Contains("method        LORA", stdout);

        (code, _, stderr) = CliRunner.Run("tokenize", "--model", "peft-tests/nothing-here", "--text", "hi");
        Assert.Equal(1, code);
        Assert.Contains("models--peft-tests--nothing-here (no such folder)", stderr);
    }
}
