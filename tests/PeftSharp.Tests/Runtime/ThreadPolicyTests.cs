using PeftSharp.Runtime;

namespace PeftSharp.Tests.Runtime;

public class ThreadPolicyTests
{
    [Theory]
    [InlineData(2, 0.0, 2)]
    [InlineData(2, 0.2, 2)]
    [InlineData(2, 0.5, 1)]   // a half-busy core: sharing it would stall every barrier
    [InlineData(2, 1.0, 1)]   // one CPU-bound neighbour on two cores
    [InlineData(2, 40.0, 1)]  // never below one
    [InlineData(16, 3.0, 13)]
    [InlineData(16, 2.8, 13)]
    public void Threads_follow_the_cores_other_processes_leave_free(int cores, double othersBusy, int want) =>
        Assert.Equal(want, ThreadPolicy.Choose(cores, othersBusy));

    [Fact]
    public void Peftsharp_threads_is_auto_a_count_or_a_one_line_error()
    {
        var before = Environment.GetEnvironmentVariable(ThreadPolicy.ThreadsVariable);
        try
        {
            Environment.SetEnvironmentVariable(ThreadPolicy.ThreadsVariable, null);
            Assert.Null(ThreadPolicy.Fixed());
            Environment.SetEnvironmentVariable(ThreadPolicy.ThreadsVariable, "auto");
            Assert.Null(ThreadPolicy.Fixed());
            Environment.SetEnvironmentVariable(ThreadPolicy.ThreadsVariable, "3");
            Assert.Equal(3, ThreadPolicy.Fixed());
            Environment.SetEnvironmentVariable(ThreadPolicy.ThreadsVariable, "0");
            var e = Assert.Throws<PeftConfigException>(() => ThreadPolicy.Fixed());
            Assert.Contains("PEFTSHARP_THREADS=0", e.Message);
        }
        finally { Environment.SetEnvironmentVariable(ThreadPolicy.ThreadsVariable, before); }
    }
}
