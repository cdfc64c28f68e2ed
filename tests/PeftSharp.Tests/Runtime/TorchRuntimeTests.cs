using PeftSharp.Runtime;

namespace PeftSharp.Tests.Runtime;

public class TorchRuntimeTests
{
    static string TempFile(byte[] content)
    {
        var path = Path.Combine(TestPaths.TempDir(), "libfake.so.6");
        File.WriteAllBytes(path, content);
        return path;
    }

    [Fact]
    public void FileContains_finds_ascii_anywhere_in_binary_data()
    {
        var bytes = new byte[5000];
        new Random(1).NextBytes(bytes);
        for (int i = 0; i < bytes.Length; i++) if (bytes[i] == (byte)'G') bytes[i] = 0; // no accidental prefix
        var needle = System.Text.Encoding.ASCII.GetBytes("GLIBCXX_3.4.32");
        var without = TempFile(bytes);
        Assert.False(TorchRuntime.FileContains(without, "GLIBCXX_3.4.32"));
        needle.CopyTo(bytes, bytes.Length - needle.Length);
        Assert.True(TorchRuntime.FileContains(TempFile(bytes), "GLIBCXX_3.4.32"));
        Assert.False(TorchRuntime.FileContains(TempFile(bytes), "GLIBCXX_3.4.33"));
    }

    [Fact]
    public void FindLibStdCxx_returns_an_existing_libstdcxx_on_linux()
    {
        if (!OperatingSystem.IsLinux()) return;
        var lib = TorchRuntime.FindLibStdCxx();
        Assert.NotNull(lib);
        Assert.True(File.Exists(lib));
        Assert.Equal("libstdc++.so.6", Path.GetFileName(lib));
        // This machine runs TorchSharp, so the library it uses has the symbol.
        Assert.True(TorchRuntime.FileContains(lib!, TorchRuntime.RequiredGlibcxx));
        TorchRuntime.CheckLibStdCxx(lib);
    }

    [Fact]
    public void Missing_symbol_error_names_the_library_the_symbol_and_the_setup_script()
    {
        var old = TempFile(System.Text.Encoding.ASCII.GetBytes("\0GLIBCXX_3.4.30\0GLIBCXX_3.4.31\0"));
        var e = Assert.Throws<PeftPlatformException>(() => TorchRuntime.CheckLibStdCxx(old));
        Assert.Contains(old, e.Message);
        Assert.Contains("GLIBCXX_3.4.32", e.Message);
        Assert.Contains("scripts/setup.sh", e.Message);
    }

    [Fact]
    public void No_library_found_defers_to_the_native_load()
    {
        TorchRuntime.CheckLibStdCxx(null);
        TorchRuntime.CheckLibStdCxx(TempFile(System.Text.Encoding.ASCII.GetBytes("..GLIBCXX_3.4.32..")));
    }
}
