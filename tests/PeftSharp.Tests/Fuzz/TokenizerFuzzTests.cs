using System.Text.Json.Nodes;
using CsCheck;
using PeftSharp.Tokenization;
using PeftSharp.Training.Quickstart;

namespace PeftSharp.Tests.Fuzz;

/// <summary>tokenizer.json with sections replaced by hostile ones: loads and encodes, or is refused naming the file; regexes bounded.</summary>
public class TokenizerFuzzTests
{
    static readonly string[] Sections = ["normalizer", "pre_tokenizer", "post_processor", "decoder", "model", "added_tokens"];
    static readonly string[] Values =
    [
        "null", "5", "\"x\"", "[]", "{}", "{\"type\": \"Unknown\"}",
        "{\"type\": \"Split\", \"pattern\": {\"Regex\": \"(a+)+$\"}, \"behavior\": \"Isolated\", \"invert\": false}",
        "{\"type\": \"Split\", \"pattern\": {\"Regex\": \"(x+x+)+y\"}, \"behavior\": \"Removed\", \"invert\": true}",
        "{\"type\": \"Split\", \"pattern\": {\"Regex\": \"(\"}, \"behavior\": \"Isolated\", \"invert\": false}",
        "{\"type\": \"Split\", \"pattern\": {\"String\": \"a\"}, \"behavior\": \"Sideways\", \"invert\": false}",
        "{\"type\": \"Replace\", \"pattern\": {\"Regex\": \"(a|aa)+(?=b)\"}, \"content\": \"x\"}",
        "{\"type\": \"Replace\", \"pattern\": {\"Regex\": \"a\"}, \"content\": 5}",
        "{\"type\": \"Sequence\", \"normalizers\": [{\"type\": \"Lowercase\"}, {\"type\": \"NFKC\"}]}",
        "{\"type\": \"Sequence\", \"pretokenizers\": \"none\"}",
        "{\"type\": \"BPE\", \"vocab\": {\"a\": 0}, \"merges\": [\"a a\"]}",
        "{\"type\": \"BPE\", \"vocab\": {\"a\": -1}, \"merges\": []}",
        "{\"type\": \"WordPiece\", \"vocab\": {}, \"unk_token\": \"[UNK]\"}",
        "[{\"id\": 99999999, \"content\": \"<x>\", \"special\": true}]",
        "[{\"id\": 1, \"content\": \"\", \"special\": true}]",
        "{\"type\": \"TemplateProcessing\", \"single\": [{\"SpecialToken\": {\"id\": \"<nope>\", \"type_id\": 0}}], \"pair\": [], \"special_tokens\": {}}",
        "{\"type\": \"ByteLevel\", \"add_prefix_space\": \"yes\"}",
        "{\"type\": \"ByteLevel\", \"add_prefix_space\": true, \"trim_offsets\": true, \"use_regex\": true}",
        "{\"type\": \"NFC\"}",
        "{\"type\": \"Split\", \"pattern\": {\"Regex\": \"\\\\s+\"}, \"behavior\": \"Isolated\", \"invert\": false}",
    ];

    [Fact]
    public void Hostile_tokenizer_sections_load_and_encode_or_are_refused_clearly()
    {
        var seedDir = TestPaths.TempDir();
        QuickstartTask.WriteTokenizer(seedDir);
        var original = JsonNode.Parse(File.ReadAllText(Path.Combine(seedDir, HfTokenizer.TokenizerFile)))!.AsObject();
        var h = new FuzzHarness("tokenizer.json", TimeSpan.FromSeconds(8));
        string[] texts = [new string('a', 3000) + "!", "hello world", new string('x', 40) + "y", "<s> é 🙂 </s>", ""];
        Gen.Select(Gen.Int[0, Sections.Length - 1], Gen.Int[0, Values.Length - 1], Gen.Int[0, Sections.Length - 1], Gen.Int[0, Values.Length - 1])
            .Fuzz((s1, v1, s2, v2) =>
            {
                var dir = TestPaths.TempDir();
                File.Copy(Path.Combine(seedDir, HfTokenizer.ConfigFile), Path.Combine(dir, HfTokenizer.ConfigFile));
                var root = (JsonObject)original.DeepClone();
                root[Sections[s1]] = JsonNode.Parse(Values[v1]);
                if (s2 != s1 && v2 % 3 == 0) root[Sections[s2]] = JsonNode.Parse(Values[v2]);
                var path = Path.Combine(dir, HfTokenizer.TokenizerFile);
                File.WriteAllText(path, root.ToJsonString());
                h.Case($"{Sections[s1]}={Values[v1]}; {Sections[s2]}={Values[v2]}", path, () =>
                {
                    var tok = HfTokenizer.FromFolder(dir);
                    foreach (var t in texts) tok.Decode(tok.Encode(t));
                });
                Directory.Delete(dir, true);
            }, iter: FuzzHarness.Iter(150));
        h.Report(minRejected: 50);
    }
}
