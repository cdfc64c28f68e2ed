using System.Text.Json.Nodes;
using PeftSharp.Tokenization;

namespace PeftSharp.Tests.Tokenization;

/// <summary>
/// Writes a GPT-2-style byte-level BPE tokenizer.json whose ids fit the 320-token fixture models:
/// &lt;pad&gt;=0, &lt;s&gt;=1, &lt;/s&gt;=2, the 256 byte symbols at 3..258 and a few merges after them.
/// </summary>
public static class TinyTokenizer
{
    public static readonly string[] Merges = { "h e", "l l", "he ll", "hell o", "Ġ w", "o r", "Ġw or" };

    public static void WriteTo(string dir)
    {
        var vocab = new JsonObject { ["<pad>"] = 0, ["<s>"] = 1, ["</s>"] = 2 };
        for (int b = 0; b < 256; b++) vocab[ByteLevel.ByteToChar[b].ToString()] = 3 + b;
        int next = 259;
        foreach (var m in Merges) vocab[m.Replace(" ", "")] = next++;
        JsonObject Special(int id, string content) => new()
        {
            ["id"] = id, ["content"] = content, ["single_word"] = false, ["lstrip"] = false, ["rstrip"] = false,
            ["normalized"] = false, ["special"] = true,
        };
        var json = new JsonObject
        {
            ["version"] = "1.0",
            ["added_tokens"] = new JsonArray(Special(0, "<pad>"), Special(1, "<s>"), Special(2, "</s>")),
            ["normalizer"] = null,
            ["pre_tokenizer"] = new JsonObject { ["type"] = "ByteLevel", ["add_prefix_space"] = false, ["trim_offsets"] = true, ["use_regex"] = true },
            ["post_processor"] = new JsonObject { ["type"] = "ByteLevel", ["add_prefix_space"] = true, ["trim_offsets"] = false, ["use_regex"] = true },
            ["decoder"] = new JsonObject { ["type"] = "ByteLevel", ["add_prefix_space"] = true, ["trim_offsets"] = true, ["use_regex"] = true },
            ["model"] = new JsonObject
            {
                ["type"] = "BPE", ["dropout"] = null, ["unk_token"] = null, ["continuing_subword_prefix"] = "", ["end_of_word_suffix"] = "",
                ["fuse_unk"] = false, ["byte_fallback"] = false, ["ignore_merges"] = false,
                ["vocab"] = vocab, ["merges"] = new JsonArray(Merges.Select(m => (JsonNode)m).ToArray()),
            },
        };
        File.WriteAllText(Path.Combine(dir, "tokenizer.json"), json.ToJsonString());
        File.WriteAllText(Path.Combine(dir, "tokenizer_config.json"),
            new JsonObject { ["bos_token"] = "<s>", ["eos_token"] = "</s>", ["pad_token"] = "<pad>", ["tokenizer_class"] = "PreTrainedTokenizerFast" }.ToJsonString());
    }

    /// <summary>A copy of a fixture model folder with the tiny tokenizer added.</summary>
    public static string ModelWithTokenizer(string model)
    {
        var dir = TestPaths.TempDir();
        foreach (var f in Directory.GetFiles(TestPaths.Model(model)))
            File.Copy(f, Path.Combine(dir, Path.GetFileName(f)));
        WriteTo(dir);
        return dir;
    }
}
