using System.Text.Json.Nodes;
using PeftSharp.Tokenization.ChatTemplates;

namespace PeftSharp.Tests.Tokenization.ChatTemplates;

/// <summary>
/// Templates covering whitespace control, loops, scoping, macros, filters, tests and methods, each compared with what
/// Python Jinja2 renders under transformers' settings (TestData/chat_templates/make_jinja_cases.py wrote the file).
/// </summary>
public class JinjaConformanceTests
{
    private static readonly Lazy<Dictionary<string, JsonObject>> Cases = new(() =>
        JsonNode.Parse(File.ReadAllText(TestPaths.Data("chat_templates", "jinja_cases.json")))!["cases"]!.AsArray()
            .Select(c => c!.AsObject()).ToDictionary(c => c["name"]!.GetValue<string>()));

    public static TheoryData<string> Names(bool errors)
    {
        var data = new TheoryData<string>();
        foreach (var (name, c) in Cases.Value)
            if (c.ContainsKey("error") == errors) data.Add(name);
        return data;
    }

    private static string Render(JsonObject c)
    {
        var ctx = (JsonObject)c["context"]!.DeepClone();
        var messages = ctx["messages"] is JsonArray m ? (JsonArray)m.DeepClone() : new JsonArray();
        ctx.Remove("messages");
        return new ChatTemplate(c["template"]!.GetValue<string>()).Render(messages, false, ctx);
    }

    [Theory]
    [MemberData(nameof(Names), false)]
    public void Renders_like_jinja2(string name)
    {
        var c = Cases.Value[name];
        Assert.Equal(c["expected"]!.GetValue<string>(), Render(c));
    }

    [Theory]
    [MemberData(nameof(Names), true)]
    public void Fails_where_jinja2_fails(string name)
    {
        var c = Cases.Value[name];
        var e = Assert.ThrowsAny<ChatTemplateException>(() => Render(c));
        Assert.False(string.IsNullOrWhiteSpace(e.Message));
    }

    [Fact]
    public void All_cases_are_present()
    {
        Assert.Equal(104, Names(false).Count);
        Assert.Equal(18, Names(true).Count);
    }
}
