using YamlDotNet.Core;
using YamlDotNet.Core.Events;
using YamlDotNet.RepresentationModel;
using PeftSharp.Runtime;

namespace PeftSharp.IO;

/// <summary>
/// Loads YAML after one linear pass over its events that bounds what the file can make us build: its node count with
/// aliases expanded (an alias bomb re-expands a list exponentially for anything that walks the tree) and nesting depth.
/// </summary>
public static class YamlGuard
{
    public static YamlStream Load(string yaml, string source)
    {
        try
        {
            CheckLimits(yaml, source);
            var stream = new YamlStream();
            stream.Load(new StringReader(yaml));
            return stream;
        }
        catch (YamlException e) { throw new PeftFormatException(source, e.Start.Line, $"not valid YAML ({e.Message})"); }
        // YamlDotNet's scanner throws this on some malformed input instead of a YamlException.
        catch (InvalidOperationException e) { throw new PeftFormatException(source, $"not valid YAML ({e.Message})"); }
        // And this one when an alias stands where it cannot (as a mapping key).
        catch (ArgumentException e) when (e.ParamName == "parser") { throw new PeftFormatException(source, $"not valid YAML (an alias or tag where a plain key or value was expected)"); }
    }

    // Counts nodes as they would be after expanding every alias (an anchor's subtree size is known when it closes).
    static void CheckLimits(string yaml, string source)
    {
        var parser = new Parser(new StringReader(yaml));
        long maxNodes = ResourceLimits.YamlMaxNodes.Value, maxDepth = ResourceLimits.YamlMaxDepth.Value;
        var anchors = new Dictionary<string, long>();
        var open = new Stack<(string? Anchor, long Size)>();
        long total = 0;
        // n more nodes exist (total) and belong to the innermost open list/mapping (its subtree size).
        void Add(long n, Mark at)
        {
            total += n;
            if (total > maxNodes) throw new PeftLimitException($"{source}:{at.Line}: the YAML (aliases expanded)", ResourceLimits.YamlMaxNodes);
            if (open.Count > 0) { var (a, size) = open.Pop(); open.Push((a, size + n)); }
        }
        long line = 1;
        // YamlDotNet's scanner throws InvalidOperationException (no position) on some malformed input: name the last good line.
        bool Next()
        {
            try { return parser.MoveNext() && (line = Math.Max(line, parser.Current!.End.Line)) > 0; }
            catch (InvalidOperationException e) { throw new PeftFormatException(source, (int)line, $"not valid YAML at or after this line ({e.Message})"); }
        }
        while (Next())
        {
            switch (parser.Current)
            {
                case AnchorAlias a when open.Any(o => o.Anchor == a.Value.Value):
                    // YamlDotNet would build a cycle that anything walking the tree follows forever.
                    throw new PeftFormatException(source, a.Start.Line, $"alias *{a.Value.Value} refers to the list or mapping that contains it (a cycle)");
                case AnchorAlias a:
                    Add(anchors.TryGetValue(a.Value.Value, out var n) ? n : 1, a.Start);
                    break;
                case Scalar sc:
                    if (!sc.Anchor.IsEmpty) anchors[sc.Anchor.Value] = 1;
                    Add(1, sc.Start);
                    break;
                case NodeEvent start and (MappingStart or SequenceStart):
                    if (open.Count >= maxDepth) throw new PeftLimitException($"{source}:{start.Start.Line}: YAML nesting", ResourceLimits.YamlMaxDepth);
                    open.Push((start.Anchor.IsEmpty ? null : start.Anchor.Value, 0));
                    break;
                case MappingEnd or SequenceEnd:
                {
                    // Its children are already in the total; the node itself is one more, and the parent holds all of it.
                    var (anchor, children) = open.Pop();
                    if (anchor is not null) anchors[anchor] = children + 1;
                    Add(1, parser.Current.Start);
                    if (open.Count > 0) { var (a, size) = open.Pop(); open.Push((a, size + children)); }
                    break;
                }
            }
        }
    }

    /// <summary>A scalar's text, or a clear error naming the line when the node is a list or a mapping.</summary>
    public static string? Scalar(YamlNode node, string source, string what)
    {
        if (node is YamlScalarNode s) return s.Value;
        var kind = node is YamlSequenceNode ? "a list" : node is YamlMappingNode ? "a mapping" : "an alias";
        throw new PeftFormatException(source, node.Start.Line, $"{what} must be a single value, found {kind}");
    }
}
