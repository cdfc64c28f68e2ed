using System.CommandLine;
using PeftSharp.IO;
using PeftSharp.Models;
using PeftSharp.Quantization;

namespace PeftSharp.Cli.Commands;

/// <summary>
/// <c>peft quantize --model DIR --out DIR</c>: writes a bitsandbytes 4-bit checkpoint (transformers' layout, loadable by
/// <c>from_pretrained</c> in Python). Every linear layer except <c>lm_head</c> is quantized; other files are copied.
/// </summary>
public static class QuantizeCommand
{
    public static Command Create()
    {
        var model = Cli.ModelOption();
        var output = new Option<string>("--out") { Description = "Output folder for the 4-bit model", Required = true };
        var quantType = new Option<string>("--quant-type") { Description = "nf4 or fp4", DefaultValueFactory = _ => "nf4" };
        var doubleQuant = new Option<bool>("--double-quant") { Description = "Quantize the block scales too (bnb_4bit_use_double_quant)" };
        var blocksize = new Option<int>("--blocksize") { Description = "Values per absmax block (32..4096, powers of two)", DefaultValueFactory = _ => 64 };
        var computeDType = new Option<string>("--compute-dtype") { Description = "float32 or bfloat16 (bnb_4bit_compute_dtype)", DefaultValueFactory = _ => "float32" };
        var dtype = Cli.DTypeOption();
        dtype.Description = "dtype the weights are loaded in before quantization (recorded as the quant_state dtype)";
        var cmd = new Command("quantize", "Quantize a model folder to bitsandbytes 4-bit (NF4/FP4) and save it")
            { model, output, quantType, doubleQuant, blocksize, computeDType, dtype };
        cmd.SetHandler((pr, o) =>
        {
            var src = Cli.ModelDir(pr, model);
            var dst = pr.GetValue(output)!;
            if (Path.GetFullPath(src).TrimEnd('/') == Path.GetFullPath(dst).TrimEnd('/'))
                throw new ArgumentException("--out must differ from --model");
            var compute = Cli.ParseDType(pr.GetValue(computeDType)!);
            var config = new BitsAndBytesConfig
            {
                LoadIn4bit = true,
                Bnb4bitQuantType = QuantTypes.Parse(pr.GetValue(quantType)!, "--quant-type").Name(),
                Bnb4bitUseDoubleQuant = pr.GetValue(doubleQuant),
                Bnb4bitComputeDType = Bnb4bit.DTypeName(compute),
                Blocksize = pr.GetValue(blocksize),
            };
            config.Validate("--blocksize/--quant-type");
            if (QuantizedModelLoader.StoredConfig(AutoModel.LoadConfig(src)) is not null)
                throw new PeftConfigException($"{src}: the model is already quantized (config.json has quantization_config)");

            using var m = AutoModel.FromPretrained(src, dtype: Cli.ParseDType(pr.GetValue(dtype)!), quantization: config);
            AutoModel.SavePretrained(m, dst, tmp => CompanionFiles.Copy(src, tmp));

            var layers = QuantizedModelLoader.QuantizedLayers(m).ToList();
            long quantParams = layers.Sum(l => l.Layer.QuantState.NumElements);
            long quantBytes = layers.Sum(l => l.Layer.PackedWeight.numel() + l.Layer.QuantState.StateDictEntries().Sum(e => e.Tensor.numel() * e.Tensor.element_size()));
            long fileBytes = FileSizes.Of(Path.Combine(dst, Checkpoint.SingleFile));
            var info = new
            {
                Out = dst,
                QuantType = config.Bnb4bitQuantType,
                DoubleQuant = config.Bnb4bitUseDoubleQuant,
                Blocksize = config.Blocksize,
                QuantizedLayers = layers.Count,
                QuantizedParameters = quantParams,
                BitsPerParameter = quantParams == 0 ? 0 : 8.0 * quantBytes / quantParams,
                FileBytes = fileBytes,
            };
            if (pr.GetValue(Cli.JsonOption)) Cli.WriteJson(o, info);
            else
            {
                o.WriteLine($"wrote {dst}: {layers.Count} linear layers as {info.QuantType}{(info.DoubleQuant ? " + double quant" : "")}, blocksize {info.Blocksize}");
                o.WriteLine($"{quantParams:N0} quantized parameters at {info.BitsPerParameter:F3} bits each (codes + scales + metadata); file {fileBytes / 1048576.0:F1} MiB");
            }
            return 0;
        });
        return cmd;
    }
}
