using System.Text.Json.Nodes;
using CsCheck;
using PeftSharp.Runtime;
using PeftSharp.Tokenization.ChatTemplates;

namespace PeftSharp.Tests.Fuzz;

/// <summary>Generated chat templates, hostile ones included: rendered, or refused by a syntax error or a named limit, in bounded time.</summary>
public class ChatTemplateFuzzTests
{
    static readonly string[] Exprs =
    [
        "1", "'x'", "messages", "messages[0]['content']", "range(100000)", "'x' * 10000000000", "[1] * 100000000", "x", "loop.index",
        "(((((1)))))", "messages | length", "'a' ~ 'b'", "none", "{'a': 1}", "[1, 2, 3]", "1 / 0", "2 ** 64", "'%s' % 1", "x.y.z",
        "messages | map(attribute='role') | join(',')", "ns.v + ns.v", "'ab'[::-1]", "range(10) | list", "m(3)", "9223372036854775807 + 1",
    ];

    static string Node(Random rng, int depth)
    {
        string E() => Exprs[rng.Next(Exprs.Length)];
        string Body() => string.Concat(Enumerable.Range(0, rng.Next(3)).Select(_ => Node(rng, depth + 1)));
        if (depth > 3) return "{{ " + E() + " }}";
        return rng.Next(9) switch
        {
            0 => "{{ " + E() + " }}",
            1 => $"{{% for x in {E()} %}}{Body()}{{% endfor %}}",
            2 => $"{{% if {E()} %}}{Body()}{{% else %}}{Body()}{{% endif %}}",
            3 => $"{{% set ns.v = {E()} %}}",
            4 => $"{{% macro m(n) %}}{Body()}{{{{ m(n + 1) if n < {rng.Next(1000)} }}}}{{% endmacro %}}",
            5 => "{{ " + new string('(', rng.Next(30000)) + "1" + new string(')', rng.Next(2) == 0 ? 0 : 5) + " }}",
            6 => "text " + E(),
            7 => "{% for a in range(" + rng.Next(100000) + ") %}{% for b in range(" + rng.Next(100000) + ") %}{% endfor %}{% endfor %}",
            _ => "{%" + E() + "%}",
        };
    }

    [Fact]
    public void Generated_templates_render_or_fail_within_their_limits()
    {
        var messages = new JsonArray(new JsonObject { ["role"] = "user", ["content"] = "hi" }, new JsonObject { ["role"] = "assistant", ["content"] = "yo" });
        var h = new FuzzHarness("chat-templates", TimeSpan.FromSeconds(3), allocationBudget: 1L << 30);
        // A tighter clock than the default keeps the whole run short; the budget above is what a case may take.
        using var clock = ResourceLimits.JinjaTimeoutMs.Override(500);
        Gen.Select(Gen.Int, Gen.Int[1, 4]).Fuzz((seed, parts) =>
        {
            var rng = new Random(seed);
            var source = "{% set ns = namespace(v='ab') %}" + string.Concat(Enumerable.Range(0, parts).Select(_ => Node(rng, 0)));
            h.Case(source.Length > 300 ? source[..300] + "..." : source, null, () => new ChatTemplate(source).Render(messages, addGenerationPrompt: true));
        }, iter: FuzzHarness.Iter(200));
        h.Report(minRejected: 60);
    }
}
