namespace PeftSharp.Tests.Cli;

public class ServeCommandTests
{
    static readonly string Model = TestPaths.Model("llama-tiny");

    [Fact]
    public void BadArgumentsFailWithOneLineBeforeBinding()
    {
        var (code, _, err) = CliRunner.Run("serve", "--model", Model, "--adapter", "noequals", "--port", "0");
        Assert.Equal(1, code);
        Assert.Contains("--adapter 'noequals' must be NAME=DIR", err);

        (code, _, err) = CliRunner.Run("serve", "--model", Model, "--adapter-root", Path.Combine(TestPaths.TempDir(), "missing"), "--port", "0");
        Assert.Equal(1, code);
        Assert.Contains("--adapter-root", err);

        (code, _, err) = CliRunner.Run("serve", "--model", Model, "--adapter", "x=" + Path.Combine(TestPaths.TempDir(), "nope"), "--port", "0");
        Assert.Equal(1, code);
        Assert.StartsWith("error: ", err);
        Assert.Single(err.Trim().Split('\n'));

        (code, _, err) = CliRunner.Run("serve", "--model", Model, "--adapter", "bad.name=" + TestPaths.Data("multi", "llama-tiny", "a"), "--port", "0");
        Assert.Equal(1, code);
        Assert.Contains("adapter name 'bad.name'", err);
    }
}
