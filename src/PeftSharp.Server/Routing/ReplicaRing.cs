using System.Buffers.Binary;
using System.Security.Cryptography;
using System.Text;

namespace PeftSharp.Server.Routing;

/// <summary>One `peft serve` behind the router: its address, whether health checks find it up, and requests in flight.</summary>
public sealed class Replica
{
    internal int _inFlight;
    volatile bool _healthy = true;

    public Replica(Uri address) => Address = address;

    public Uri Address { get; }
    public bool Healthy { get => _healthy; set => _healthy = value; }
    public int InFlight => Volatile.Read(ref _inFlight);
    /// <summary>Health checks in a row that timed out.</summary>
    internal int SlowChecks { get; set; }
    public override string ToString() => Address.ToString();
}

/// <summary>
/// Consistent hashing with bounded loads (Mirrokni, Thorup, Zadimoghaddam 2018): every replica owns many points on a
/// hash ring; a key (the request's model, i.e. adapter) goes to the first replica clockwise from its hash that is
/// healthy and has fewer than ⌈<see cref="LoadFactor"/> × (in-flight + 1) / healthy⌉ requests in flight. So an adapter
/// keeps hitting the replica that already holds it, a hot adapter spills over to the next replica on the ring, and a
/// dead replica's adapters move while every other adapter stays where it was.
/// </summary>
public sealed class ReplicaRing
{
    readonly (ulong Point, Replica Replica)[] _ring;

    public ReplicaRing(IReadOnlyList<Replica> replicas, int pointsPerReplica = 160, double loadFactor = 1.25)
    {
        if (replicas.Count == 0) throw new ArgumentException("the router needs at least one backend");
        if (loadFactor < 1) throw new ArgumentException($"load factor {loadFactor}: expected >= 1");
        Replicas = replicas;
        LoadFactor = loadFactor;
        _ring = replicas.SelectMany(r => Enumerable.Range(0, pointsPerReplica).Select(i => (Hash($"{r.Address}#{i}"), r)))
            .OrderBy(x => x.Item1).ToArray();
    }

    public IReadOnlyList<Replica> Replicas { get; }
    public double LoadFactor { get; }

    static ulong Hash(string key) => BinaryPrimitives.ReadUInt64LittleEndian(SHA256.HashData(Encoding.UTF8.GetBytes(key)));

    /// <summary>
    /// The replica for <paramref name="key"/> among the healthy ones not in <paramref name="exclude"/>, its in-flight count
    /// already raised (call <see cref="Release"/> when the request ends); null when none is left.
    /// </summary>
    public Replica? Acquire(string key, IReadOnlySet<Replica>? exclude = null)
    {
        lock (_ring)
        {
            var candidates = Replicas.Where(r => r.Healthy && exclude?.Contains(r) != true).ToList();
            if (candidates.Count == 0) return null;
            int total = Replicas.Sum(r => r.InFlight);
            int bound = (int)Math.Ceiling(LoadFactor * (total + 1) / candidates.Count);
            ulong h = Hash(key);
            int start = Array.BinarySearch(_ring, (h, null!), PointComparer.Instance);
            if (start < 0) start = ~start;
            Replica? first = null;
            for (int i = 0; i < _ring.Length; i++)
            {
                var r = _ring[(start + i) % _ring.Length].Replica;
                if (!r.Healthy || exclude?.Contains(r) == true) continue;
                first ??= r;
                if (r.InFlight < bound) { r._inFlight++; return r; }
            }
            first!._inFlight++; // cannot happen with bound ≥ average, but never refuse while a replica is up
            return first;
        }
    }

    /// <summary>The replica <paramref name="key"/> goes to when nothing is in flight (its "home").</summary>
    public Replica? Home(string key)
    {
        var r = Acquire(key);
        if (r is not null) Release(r);
        return r;
    }

    public void Release(Replica replica)
    {
        lock (_ring) replica._inFlight--;
    }

    sealed class PointComparer : IComparer<(ulong Point, Replica Replica)>
    {
        public static readonly PointComparer Instance = new();
        public int Compare((ulong Point, Replica Replica) x, (ulong Point, Replica Replica) y) => x.Point.CompareTo(y.Point);
    }
}
