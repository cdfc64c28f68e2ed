using System.Text.Json.Nodes;
using PeftSharp.Models;
using PeftSharp.Runtime;
using PeftSharp.Tuners;

namespace PeftSharp.Tests.Fuzz;

/// <summary>
/// Every method's adapter_config.json sizes are range-checked before anything is allocated, and the adapter's total
/// parameter bytes are checked against PEFTSHARP_MAX_ADAPTER_BYTES (found by the soak: r=1e9 made libtorch try to
/// allocate 256 GB and crash with an ExternalException).
/// </summary>
public class AdapterConfigRangeTests
{
    static string Folder(string kind, string name) => kind == "hub" ? TestPaths.Data("adapterhub", "llama-tiny", name) : TestPaths.Data("adapters", "llama-tiny", name);

    /// <summary>Copies an adapter folder with <paramref name="path"/> (JSON keys separated by '/', numbers index arrays) set to <paramref name="value"/>.</summary>
    static string Mutated(string kind, string name, string path, string value)
    {
        var source = Folder(kind, name);
        var dir = TestPaths.TempDir();
        foreach (var f in Directory.GetFiles(source)) File.Copy(f, Path.Combine(dir, Path.GetFileName(f)));
        var configPath = Path.Combine(dir, AdapterFiles.ConfigFile);
        var root = JsonNode.Parse(File.ReadAllText(configPath))!;
        var keys = path.Split('/');
        var node = root;
        foreach (var k in keys[..^1]) node = int.TryParse(k, out var i) ? node[i]! : node[k]!;
        node[keys[^1]] = JsonNode.Parse(value);
        File.WriteAllText(configPath, root.ToJsonString());
        return dir;
    }

    [Theory]
    [InlineData("peft", "lora_qv", "r", "1e9")]                       // the soak's crash: 256 GB asked of libtorch
    [InlineData("peft", "lora_qv", "r", "65537")]
    [InlineData("peft", "lora_qv", "lora_alpha", "1e400")]
    [InlineData("peft", "lora_patterns", "rank_pattern", "{\"q_proj\": 1e12}")]
    [InlineData("peft", "lora_qv", "layers_to_transform", "[0, -1]")]
    [InlineData("peft", "dora", "r", "2147483647")]
    [InlineData("peft", "vera", "r", "1000000000")]
    [InlineData("peft", "vera", "projection_prng_key", "1e300")]
    [InlineData("peft", "adalora", "init_r", "1e9")]
    [InlineData("peft", "adalora", "target_r", "-3")]
    [InlineData("peft", "adalora", "tinit", "-1")]
    [InlineData("peft", "prompt_tuning", "num_virtual_tokens", "1e9")]
    [InlineData("peft", "prompt_tuning", "token_dim", "1000000000")]
    [InlineData("peft", "p_tuning", "encoder_hidden_size", "1e9")]
    [InlineData("peft", "p_tuning", "encoder_num_layers", "100000")]
    [InlineData("peft", "prefix_tuning", "num_virtual_tokens", "200000")]
    [InlineData("peft", "prefix_tuning_proj", "encoder_hidden_size", "1e9")]
    [InlineData("peft", "prefix_tuning", "num_layers", "0")]
    [InlineData("peft", "adaption_prompt", "adapter_len", "1e9")]
    [InlineData("peft", "adaption_prompt", "adapter_layers", "100000")]
    [InlineData("hub", "seq_bn", "config/reduction_factor", "1e-9")]
    [InlineData("hub", "seq_bn", "config/dropout", "2")]
    [InlineData("hub", "seq_bn", "config/leave_out", "[-5]")]
    [InlineData("hub", "lora", "config/r", "1e9")]
    [InlineData("hub", "prefix_tuning", "config/bottleneck_size", "1e9")]
    [InlineData("hub", "prefix_tuning", "config/prefix_length", "1e9")]
    [InlineData("hub", "mam", "config/configs/1/reduction_factor", "0")]
    public void An_out_of_range_size_is_refused_naming_the_file_and_field_before_allocating(string kind, string adapter, string path, string value)
    {
        var dir = Mutated(kind, adapter, path, value);
        using var model = AutoModel.FromPretrained(TestPaths.Model("llama-tiny"));
        var e = Assert.ThrowsAny<PeftConfigException>(() => PeftModel.FromPretrained(model, dir));
        Assert.Contains(Path.Combine(dir, AdapterFiles.ConfigFile), e.Message);
        Assert.Contains(path.Split('/')[^1], e.Message);
        Assert.DoesNotContain('\n', e.Message);
    }

    [Theory]
    [InlineData("peft", "lora_qv", "r", "4096")]
    [InlineData("peft", "vera", "r", "4096")]
    [InlineData("peft", "adalora", "init_r", "4096")]
    [InlineData("peft", "prompt_tuning", "num_virtual_tokens", "65536")]
    [InlineData("peft", "prefix_tuning", "num_virtual_tokens", "65536")]
    [InlineData("peft", "adaption_prompt", "adapter_len", "65536")]
    [InlineData("peft", "ia3", "inference_mode", "true")]
    [InlineData("hub", "seq_bn", "config/reduction_factor", "0.016")]
    public void An_adapter_over_the_byte_limit_is_refused_naming_the_limit_and_the_file(string kind, string adapter, string path, string value)
    {
        var dir = Mutated(kind, adapter, path, value);
        using var model = AutoModel.FromPretrained(TestPaths.Model("llama-tiny"));
        // llama-tiny is 64 wide: every mutated adapter above needs at least 1 MiB; IA3 needs a few KiB.
        using var _ = ResourceLimits.MaxAdapterBytes.Override(adapter == "ia3" ? 64 : 1 << 20);
        var e = Assert.Throws<PeftLimitException>(() => PeftModel.FromPretrained(model, dir));
        Assert.Equal("PEFTSHARP_MAX_ADAPTER_BYTES", e.Limit);
        Assert.Contains(Path.Combine(dir, AdapterFiles.ConfigFile), e.Message);
        Assert.Empty(model.named_modules().Where(m => m.module is IAdapterLayer));
    }

    [Fact]
    public void The_default_limit_lets_every_shipped_adapter_load()
    {
        foreach (var kind in new[] { "peft", "hub" })
            foreach (var dir in Directory.GetDirectories(kind == "hub" ? TestPaths.Data("adapterhub", "llama-tiny") : TestPaths.Data("adapters", "llama-tiny")))
            {
                if (!File.Exists(Path.Combine(dir, AdapterFiles.ConfigFile))) continue;
                using var model = AutoModel.FromPretrained(TestPaths.Model("llama-tiny"));
                using var peft = PeftModel.FromPretrained(model, dir);
                Assert.NotEmpty(peft.Configs);
            }
    }
}
