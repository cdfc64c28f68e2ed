using PeftSharp.Runtime;

namespace PeftSharp.Tests.Runtime;

public class PeriodicCollectorTests
{
    [Fact]
    public void Collects_only_once_the_interval_has_passed_since_the_last_collection()
    {
        var never = new PeriodicCollector(intervalMs: 60_000);
        Assert.False(never.Tick());
        Assert.False(never.Tick());

        var always = new PeriodicCollector(intervalMs: 0);
        Assert.True(always.Tick());
        Assert.True(always.Tick());

        var shortInterval = new PeriodicCollector(intervalMs: 50);
        Assert.False(shortInterval.Tick());
        Thread.Sleep(80);
        Assert.True(shortInterval.Tick());
        Assert.False(shortInterval.Tick()); // the clock restarted with the collection
    }
}
