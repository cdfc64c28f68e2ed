using System.Text.Json.Nodes;
using PeftSharp.IO;
using PeftSharp.Models;
using static TorchSharp.torch;

namespace PeftSharp.Tests.IO;

public class ShardedCheckpointTests
{
    const string Shard1 = "model-00001-of-00002.safetensors", Shard2 = "model-00002-of-00002.safetensors";

    /// <summary>A copy of a fixture model split into two shards plus model.safetensors.index.json (as save_pretrained shards).</summary>
    static string ShardedCopy(string model)
    {
        using var scope = NewDisposeScope();
        var src = TestPaths.Model(model);
        var dir = TestPaths.TempDir();
        File.Copy(Path.Combine(src, "config.json"), Path.Combine(dir, "config.json"));
        using var f = SafetensorsFile.Open(Path.Combine(src, Checkpoint.SingleFile));
        var keys = f.Keys.Order(StringComparer.Ordinal).ToList();
        var first = keys.Take(keys.Count / 2).ToList();
        var second = keys.Skip(keys.Count / 2).ToList();
        var meta = new Dictionary<string, string> { ["format"] = "pt" };
        SafetensorsWriter.Save(Path.Combine(dir, Shard1), first.Select(k => KeyValuePair.Create(k, f.Load(k))), meta);
        SafetensorsWriter.Save(Path.Combine(dir, Shard2), second.Select(k => KeyValuePair.Create(k, f.Load(k))), meta);
        var map = new JsonObject();
        foreach (var k in first) map[k] = Shard1;
        foreach (var k in second) map[k] = Shard2;
        var total = f.Entries.Values.Sum(e => e.ByteLength);
        var index = new JsonObject { ["metadata"] = new JsonObject { ["total_size"] = total }, ["weight_map"] = map };
        AtomicFile.WriteAllText(Path.Combine(dir, Checkpoint.IndexFile), index.ToJsonString());
        return dir;
    }

    [Theory]
    [InlineData("llama-tiny")]
    [InlineData("qwen2-tiny")]
    public void Sharded_load_gives_the_same_logits_as_single_file(string model)
    {
        var dir = ShardedCopy(model);
        Assert.False(File.Exists(Path.Combine(dir, Checkpoint.SingleFile)));
        using var scope = NewDisposeScope();
        using var cases = SafetensorsFile.Open(Path.Combine(TestPaths.Model(model), "cases.safetensors"));
        var ids = cases.Load("input_ids");
        var mask = cases.Load("attention_mask");
        using var single = AutoModel.FromPretrained(TestPaths.Model(model));
        using var sharded = AutoModel.FromPretrained(dir);
        using var checkpoint = Checkpoint.Open(dir);
        Assert.Equal(2, checkpoint.Files.Count);
        using var _ = no_grad();
        var a = single.Forward(ids, mask).Logits;
        var b = sharded.Forward(ids, mask).Logits;
        Assert.Equal(0.0, FixtureAssert.MaxAbsDiff(b, a));
        FixtureAssert.Close(b, cases.Load("logits"), mask, 1e-4, "sharded logits");
    }

    [Fact]
    public void Missing_shard_names_the_index_and_the_shard()
    {
        var dir = ShardedCopy("llama-tiny");
        File.Delete(Path.Combine(dir, Shard2));
        var e = Assert.Throws<PeftFormatException>(() => AutoModel.FromPretrained(dir));
        Assert.Contains(Path.Combine(dir, Checkpoint.IndexFile), e.Message);
        Assert.Contains($"shard '{Shard2}' listed in weight_map does not exist", e.Message);
    }

    [Fact]
    public void Index_that_is_not_json()
    {
        var dir = ShardedCopy("llama-tiny");
        File.WriteAllText(Path.Combine(dir, Checkpoint.IndexFile), "{ \"weight_map\": ");
        var e = Assert.Throws<PeftFormatException>(() => AutoModel.FromPretrained(dir));
        Assert.Contains(Checkpoint.IndexFile, e.Message);
        Assert.Contains("not valid JSON", e.Message);
    }

    [Theory]
    [InlineData("{\"metadata\": {}}", "missing object field 'weight_map'")]
    [InlineData("[1]", "missing object field 'weight_map'")]
    [InlineData("{\"weight_map\": {\"lm_head.weight\": 3}}", "weight_map['lm_head.weight'] must be a file name")]
    [InlineData("{\"weight_map\": {\"lm_head.weight\": \"../model.safetensors\"}}", "must be a file in the same folder")]
    public void Bad_index_contents(string json, string fault)
    {
        var dir = ShardedCopy("llama-tiny");
        File.WriteAllText(Path.Combine(dir, Checkpoint.IndexFile), json);
        var e = Assert.Throws<PeftFormatException>(() => Checkpoint.Open(dir));
        Assert.Contains(Path.Combine(dir, Checkpoint.IndexFile), e.Message);
        Assert.Contains(fault, e.Message);
    }

    [Fact]
    public void Index_pointing_at_the_wrong_shard()
    {
        var dir = ShardedCopy("llama-tiny");
        var path = Path.Combine(dir, Checkpoint.IndexFile);
        var index = JsonNode.Parse(File.ReadAllText(path))!.AsObject();
        index["weight_map"]!["lm_head.weight"] = Shard2; // it lives in shard 1
        File.WriteAllText(path, index.ToJsonString());
        var e = Assert.Throws<PeftFormatException>(() => Checkpoint.Open(dir));
        Assert.Contains(Shard2, e.Message);
        Assert.Contains("weight_map says it holds lm_head.weight but it does not", e.Message);
    }

    [Fact]
    public void Index_missing_a_tensor_is_a_missing_key_error()
    {
        var dir = ShardedCopy("llama-tiny");
        var path = Path.Combine(dir, Checkpoint.IndexFile);
        var index = JsonNode.Parse(File.ReadAllText(path))!.AsObject();
        index["weight_map"]!.AsObject().Remove("model.norm.weight");
        File.WriteAllText(path, index.ToJsonString());
        var e = Assert.Throws<PeftFormatException>(() => AutoModel.FromPretrained(dir));
        Assert.Contains("missing keys: model.norm.weight", e.Message);
    }

    [Fact]
    public void Folder_without_weights()
    {
        var dir = TestPaths.TempDir();
        var e = Assert.Throws<PeftFormatException>(() => Checkpoint.Open(dir));
        Assert.Contains(dir, e.Message);
        Assert.Contains($"no {Checkpoint.SingleFile} or {Checkpoint.IndexFile}", e.Message);
    }
}
