using System.CommandLine;
using System.Text.Json;
using System.Text.Encodings.Web;
using System.Text.Json.Serialization;
using TorchSharp;
using static TorchSharp.torch;

namespace PeftSharp.Cli;

/// <summary>Options and plumbing every command shares: --json, --verbose, device/dtype parsing, one-line errors.</summary>
public static class Cli
{
    public static readonly Option<bool> JsonOption = new("--json") { Description = "Machine-readable JSON on stdout", Recursive = true };
    public static readonly Option<bool> VerboseOption = new("--verbose") { Description = "Show stack traces on errors", Recursive = true };

    public static Option<string> ModelOption() => new("--model") { Description = "Hugging Face model folder (config.json + safetensors), or a repo id (Org/Name[@revision]) in the local Hugging Face cache", Required = true };

    /// <summary>The --model value as a local folder: the folder itself, or a repo id's snapshot in the Hugging Face cache.</summary>
    public static string ModelDir(ParseResult pr, Option<string> model) => PeftSharp.IO.HfHubCache.ResolveFolder(pr.GetValue(model)!);
    public static Option<string> DeviceOption() => new("--device") { Description = "cpu, cuda or cuda:N", DefaultValueFactory = _ => "cpu" };
    public static Option<string> DTypeOption() => new("--dtype") { Description = "float32 or bfloat16", DefaultValueFactory = _ => "float32" };

    public static Option<string?> TemplateOption() => new("--template") { Description = "A named template of the folder, or a built-in one: chatml, llama3, llama2, alpaca" };

    public static System.Text.Json.Nodes.JsonObject? ParseJsonObject(string? text, string option)
    {
        if (text is null) return null;
        try
        {
            return System.Text.Json.Nodes.JsonNode.Parse(text) as System.Text.Json.Nodes.JsonObject
                ?? throw new ArgumentException($"{option} must be a JSON object");
        }
        catch (JsonException e) { throw new ArgumentException($"{option} is not valid JSON: {e.Message}"); }
    }

    public static Option<string[]> AdapterOption() => new("--adapter")
    {
        Description = "Adapter folder or cached repo id, or NAME=DIR; repeat to load several (the first is active)",
    };

    /// <summary>"DIR" or "NAME=DIR" values; a bare first folder is named "default" (as peft), later ones after their folder.</summary>
    public static List<(string Name, string Dir)> ParseAdapters(string[]? values)
    {
        var list = new List<(string Name, string Dir)>();
        foreach (var v in values ?? Array.Empty<string>())
        {
            int eq = v.IndexOf('=');
            var named = eq > 0 && !v[..eq].Contains('/') && !v[..eq].Contains('\\');
            var dir = named ? v[(eq + 1)..] : v;
            var name = named ? v[..eq] : list.Count == 0 ? "default" : Path.GetFileName(Path.TrimEndingDirectorySeparator(dir));
            if (dir.Length == 0) throw new ArgumentException($"--adapter '{v}': no folder given");
            if (list.Any(a => a.Name == name)) throw new ArgumentException($"--adapter: the name '{name}' is used twice (use NAME=DIR)");
            list.Add((name, PeftSharp.IO.HfHubCache.ResolveFolder(dir, "adapter")));
        }
        return list;
    }

    /// <summary>Loads a model folder and, when adapters are given, wraps it in a PeftModel with them loaded (the first active).</summary>
    public static (PeftSharp.Models.PreTrainedModel Model, PeftSharp.Tuners.PeftModel? Peft) LoadModel(string dir, string[]? adapters, Device device, ScalarType dtype)
    {
        var list = ParseAdapters(adapters);
        // The first adapter's task_type picks the head the base is built with, as peft's AutoPeftModel.
        var model = list.Count == 0 ? PeftSharp.Models.AutoModel.FromPretrained(dir, device, dtype) : PeftSharp.Tuners.AutoPeftModel.LoadBase(dir, list[0].Dir, device, dtype);
        if (list.Count == 0) return (model, null);
        var peft = PeftSharp.Tuners.PeftModel.LoadWithAdapters(model, list);
        return (peft.Model, peft);
    }

    public static readonly JsonSerializerOptions Json = new()
    {
        WriteIndented = false,
        Encoder = JavaScriptEncoder.UnsafeRelaxedJsonEscaping,
        DefaultIgnoreCondition = JsonIgnoreCondition.WhenWritingNull,
        PropertyNamingPolicy = JsonNamingPolicy.SnakeCaseLower,
    };

    /// <summary>Runs a command body; any exception becomes one line on stderr through <see cref="ErrorReporter"/>.</summary>
    public static void SetHandler(this Command command, Func<ParseResult, TextWriter, int> body)
    {
        command.SetAction(pr =>
        {
            var stdout = pr.InvocationConfiguration.Output;
            var stderr = pr.InvocationConfiguration.Error;
            try
            {
                return body(pr, stdout);
            }
            catch (Exception e)
            {
                return ErrorReporter.Report(e, stderr, pr.GetValue(VerboseOption));
            }
        });
    }

    public static void WriteJson(TextWriter w, object value) => w.WriteLine(JsonSerializer.Serialize(value, Json));

    public static Device ParseDevice(string s)
    {
        Device d;
        try { d = torch.device(s); }
        catch (Exception) { throw new ArgumentException($"--device '{s}' is not a device (expected cpu, cuda or cuda:N)"); }
        if (d.type == DeviceType.CUDA && !torch.cuda.is_available())
            throw new ArgumentException($"--device '{s}': CUDA is not available (this build uses TorchSharp-cpu, or no GPU/driver is present; reference TorchSharp-cuda-linux for GPUs)");
        return d;
    }

    public static ScalarType ParseDType(string s) => s.ToLowerInvariant() switch
    {
        "float32" or "fp32" or "f32" => ScalarType.Float32,
        "bfloat16" or "bf16" => ScalarType.BFloat16,
        _ => throw new ArgumentException($"--dtype '{s}' is not supported (expected float32 or bfloat16)"),
    };

    /// <summary>Parses "1 2 3;4 5 6" (rows separated by ';', ids by spaces or commas).</summary>
    public static long[][] ParseIdRows(string s, string option)
    {
        var rows = s.Split(';', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
        if (rows.Length == 0) throw new ArgumentException($"{option} is empty");
        return rows.Select((r, i) => r.Split(new[] { ' ', ',' }, StringSplitOptions.RemoveEmptyEntries)
            .Select(x => long.TryParse(x, out var v) ? v : throw new ArgumentException($"{option}: '{x}' in row {i} is not an integer"))
            .ToArray()).ToArray();
    }
}
