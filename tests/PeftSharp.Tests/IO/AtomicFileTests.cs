using PeftSharp.IO;
using static TorchSharp.torch;

namespace PeftSharp.Tests.IO;

public class AtomicFileTests
{
    [Fact]
    public void Writer_that_throws_midway_leaves_the_previous_file_and_no_temp_file()
    {
        var dir = TestPaths.TempDir();
        var path = Path.Combine(dir, "out.bin");
        AtomicFile.WriteAllText(path, "previous");
        var e = Assert.Throws<IOException>(() => AtomicFile.Write(path, s =>
        {
            s.Write(new byte[1 << 16]);
            throw new IOException("disk full");
        }));
        Assert.Equal("disk full", e.Message);
        Assert.Equal("previous", File.ReadAllText(path));
        Assert.Equal(new[] { "out.bin" }, Directory.GetFiles(dir).Select(Path.GetFileName));
    }

    [Fact]
    public void Failed_first_write_creates_nothing()
    {
        var dir = TestPaths.TempDir();
        var path = Path.Combine(dir, "sub", "new.txt");
        Assert.Throws<InvalidOperationException>(() => AtomicFile.Write(path, _ => throw new InvalidOperationException()));
        Assert.False(File.Exists(path));
        Assert.Empty(Directory.GetFiles(Path.Combine(dir, "sub")));
    }

    [Fact]
    public void Successful_write_replaces_the_file_and_leaves_no_temp_file()
    {
        var dir = TestPaths.TempDir();
        var path = Path.Combine(dir, "out.txt");
        AtomicFile.WriteAllText(path, "one");
        AtomicFile.WriteAllText(path, "two");
        Assert.Equal("two", File.ReadAllText(path));
        Assert.Single(Directory.GetFiles(dir));
    }

    /// <summary>A tensor that cannot be saved fails the whole write: the old safetensors file stays readable.</summary>
    [Fact]
    public void Failed_safetensors_save_keeps_the_old_file()
    {
        using var scope = NewDisposeScope();
        var dir = TestPaths.TempDir();
        var path = Path.Combine(dir, "w.safetensors");
        SafetensorsWriter.Save(path, new Dictionary<string, Tensor> { ["a"] = ones(3) });
        var before = File.ReadAllBytes(path);
        var bad = new Dictionary<string, Tensor> { ["a"] = zeros(4), ["c"] = zeros(2, ScalarType.ComplexFloat64) };
        Assert.Throws<PeftSharpException>(() => SafetensorsWriter.Save(path, bad));
        Assert.Equal(before, File.ReadAllBytes(path));
        Assert.Single(Directory.GetFiles(dir));
    }
}
