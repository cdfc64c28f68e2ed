using System.CommandLine;
using PeftSharp.IO;
using PeftSharp.IO.Gguf;
using TorchSharp;

namespace PeftSharp.Cli.Commands;

/// <summary>
/// <c>peft export --format gguf --model DIR [--adapter A ...] --out model.gguf [--dtype f32|f16|q8_0] [--lora-only]</c>:
/// the model with its adapters merged, or with --lora-only the adapter alone, as GGUF for llama.cpp (and Ollama,
/// LLamaSharp), with the tokenizer, chat template and hyperparameters llama.cpp reads.
/// </summary>
public static class ExportCommand
{
    public static Command Create()
    {
        var format = new Option<string>("--format") { Description = "Output format: gguf", DefaultValueFactory = _ => "gguf" };
        var model = Cli.ModelOption();
        var adapters = Cli.AdapterOption();
        var output = new Option<string>("--out") { Description = "Output .gguf file", Required = true };
        var dtype = new Option<string>("--dtype") { Description = "f32, f16 or q8_0 (norms and biases stay f32)", DefaultValueFactory = _ => "f16" };
        var loraOnly = new Option<bool>("--lora-only") { Description = "Write the (one) LoRA adapter as a GGUF LoRA adapter llama.cpp applies at load, not a merged model" };
        var cmd = new Command("export", "Export a model (adapters merged) or a LoRA adapter to GGUF for llama.cpp") { format, model, adapters, output, dtype, loraOnly };
        cmd.SetHandler((pr, o) =>
        {
            if (pr.GetValue(format)!.ToLowerInvariant() != "gguf") throw new ArgumentException($"--format '{pr.GetValue(format)}' is not supported (expected gguf)");
            var type = pr.GetValue(dtype)!.ToLowerInvariant() switch
            {
                "f32" or "float32" => GgufDType.F32,
                "f16" or "float16" => GgufDType.F16,
                "q8_0" => GgufDType.Q8_0,
                var d => throw new ArgumentException($"--dtype '{d}' is not supported (expected f32, f16 or q8_0)"),
            };
            var dir = Cli.ModelDir(pr, model);
            var outPath = pr.GetValue(output)!;
            var adapterList = pr.GetValue(adapters) ?? [];
            bool lora = pr.GetValue(loraOnly);
            if (lora && adapterList.Length != 1) throw new ArgumentException("--lora-only writes one adapter: give exactly one --adapter");
            var (m, peft) = Cli.LoadModel(dir, adapterList, torch.CPU, torch.ScalarType.Float32);
            var name = Path.GetFileName(Path.TrimEndingDirectorySeparator(Path.GetFullPath(dir)));
            GgufWriter writer;
            if (lora)
                writer = GgufExport.LoraAdapter(peft!, type, Path.GetFileName(Path.TrimEndingDirectorySeparator(adapterList[0])));
            else
            {
                if (peft is not null) peft.Merge(peft.Adapters);
                var merged = peft?.Unload() ?? m;
                // A training run may have added tokens: its own tokenizer then describes the merged vocabulary.
                var tokenizerDir = adapterList.Length > 0 && File.Exists(Path.Combine(Cli.ParseAdapters(adapterList)[0].Dir, "tokenizer.json"))
                    ? Cli.ParseAdapters(adapterList)[0].Dir : dir;
                writer = GgufExport.Model(merged, tokenizerDir, type, name);
            }
            foreach (var caveat in GgufExport.Caveats(m.Config)) pr.InvocationConfiguration.Error.WriteLine($"warning: {caveat}");
            writer.Write(outPath);
            long bytes = FileSizes.Of(outPath);
            if (pr.GetValue(Cli.JsonOption))
                Cli.WriteJson(o, new { Out = outPath, Format = "gguf", Kind = lora ? "lora" : "model", Dtype = type.ToString().ToLowerInvariant(), Tensors = writer.TensorCount, Bytes = bytes });
            else
                o.WriteLine($"wrote {outPath}: {(lora ? "GGUF LoRA adapter" : "GGUF model")}, {writer.TensorCount} tensors, {type.ToString().ToLowerInvariant()}, {bytes / 1048576.0:F1} MiB");
            return 0;
        });
        return cmd;
    }
}
