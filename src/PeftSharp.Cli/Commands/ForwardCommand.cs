using System.CommandLine;
using PeftSharp.IO;
using PeftSharp.Models;
using TorchSharp;
using static TorchSharp.torch;

namespace PeftSharp.Cli.Commands;

/// <summary>
/// <c>peft forward --model DIR --input-ids "1 2 3;4 5 6" --output FILE.safetensors</c>: one forward pass,
/// logits (and the inputs) dumped to safetensors so users can diff them against transformers.
/// </summary>
public static class ForwardCommand
{
    public static Command Create()
    {
        var model = Cli.ModelOption();
        var ids = new Option<string>("--input-ids") { Description = "Token ids: rows separated by ';', ids by spaces or commas", Required = true };
        var mask = new Option<string?>("--attention-mask") { Description = "1 = attend, 0 = padding; same shape as --input-ids" };
        var types = new Option<string?>("--token-type-ids") { Description = "Segment ids (BERT); same shape as --input-ids" };
        var output = new Option<string>("--output") { Description = "safetensors file to write (logits, input_ids, attention_mask[, token_type_ids])", Required = true };
        var adapter = Cli.AdapterOption();
        var perRow = new Option<string?>("--adapter-per-row") { Description = "Adapter name per row, e.g. a,b,__base__ (a mixed-adapter batch in one pass)" };
        var compose = CompositionOptions.ComposeOption();
        var fusion = CompositionOptions.FusionOption();
        var device = Cli.DeviceOption();
        var dtype = Cli.DTypeOption();
        var cmd = new Command("forward", "Run one forward pass and write the logits to a safetensors file") { model, ids, mask, types, output, adapter, perRow, compose, fusion, device, dtype };
        cmd.SetHandler((pr, o) =>
        {
            var dev = Cli.ParseDevice(pr.GetValue(device)!);
            var dt = Cli.ParseDType(pr.GetValue(dtype)!);
            var idRows = Cli.ParseIdRows(pr.GetValue(ids)!, "--input-ids");
            var maskRows = pr.GetValue(mask) is { } ms ? Cli.ParseIdRows(ms, "--attention-mask") : null;
            var typeRows = pr.GetValue(types) is { } ts ? Cli.ParseIdRows(ts, "--token-type-ids") : null;
            var outPath = pr.GetValue(output)!;
            CheckShapes(idRows, maskRows, typeRows);
            if (maskRows?.SelectMany(r => r).FirstOrNull(v => v is not (0 or 1)) is long bad)
                throw new ArgumentException($"--attention-mask: {bad} is not 0 or 1");

            var dir = Cli.ModelDir(pr, model);
            var config = AutoModel.LoadConfig(dir);
            if (idRows.SelectMany(r => r).FirstOrNull(v => v < 0 || v >= config.VocabSize) is long oob)
                throw new ArgumentException($"--input-ids: {oob} is outside the vocabulary [0, {config.VocabSize})");

            var rowNames = pr.GetValue(perRow)?.Split(',', StringSplitOptions.TrimEntries);
            if (rowNames is not null && rowNames.Length != idRows.Length)
                throw new ArgumentException($"--adapter-per-row names {rowNames.Length} adapters for {idRows.Length} rows");
            var (m, peft) = Cli.LoadModel(dir, pr.GetValue(adapter), dev, dt);
            if (rowNames is not null && peft is null) throw new ArgumentException("--adapter-per-row needs --adapter");
            using var _ = m;
            Tuners.AdapterComposition.Apply(peft, pr.GetValue(compose), pr.GetValue(fusion));
            using var scope = NewDisposeScope();
            var inputIds = Rows(idRows);
            var attentionMask = maskRows is null ? ones_like(inputIds) : Rows(maskRows);
            var tokenTypes = typeRows is null ? null : Rows(typeRows);
            Tensor logits;
            using (no_grad())
            {
                var inputs = new ModelInputs { InputIds = inputIds.to(dev), AttentionMask = attentionMask.to(dev), TokenTypeIds = tokenTypes?.to(dev) };
                logits = (peft is null ? m.Forward(inputs) : peft.Forward(inputs, rowNames)).Logits.cpu();
            }

            var tensors = new Dictionary<string, Tensor> { ["logits"] = logits, ["input_ids"] = inputIds, ["attention_mask"] = attentionMask };
            if (tokenTypes is not null) tensors["token_type_ids"] = tokenTypes;
            SafetensorsWriter.Save(outPath, tensors, new Dictionary<string, string> { ["format"] = "pt" });

            var first = logits.view(-1).narrow(0, 0, Math.Min(5, logits.numel())).to(ScalarType.Float64).data<double>().ToArray();
            var summary = new
            {
                Output = Path.GetFullPath(outPath),
                Shape = logits.shape,
                Dtype = SafetensorsDType.NameOf(logits.dtype),
                First = first,
                MeanAbs = logits.to(ScalarType.Float64).abs().mean().item<double>(),
            };
            if (pr.GetValue(Cli.JsonOption)) Cli.WriteJson(o, summary);
            else
            {
                o.WriteLine($"wrote {summary.Output}");
                o.WriteLine($"logits {summary.Dtype} [{string.Join(", ", summary.Shape)}], first {string.Join(" ", first.Select(x => x.ToString("G6")))}, mean |x| {summary.MeanAbs:G6}");
            }
            return 0;
        });
        return cmd;
    }

    /// <summary>Every row must have the same length, and mask/token types the shape of the ids: padding is explicit.</summary>
    static void CheckShapes(long[][] ids, long[][]? mask, long[][]? types)
    {
        var lengths = ids.Select(r => r.Length).Distinct().ToList();
        if (lengths.Count > 1)
            throw new ArgumentException($"--input-ids rows have different lengths ({string.Join(", ", ids.Select(r => r.Length))}): pad them to one length and pass --attention-mask with 0 at the padding");
        foreach (var (rows, name) in new[] { (mask, "--attention-mask"), (types, "--token-type-ids") })
        {
            if (rows is null) continue;
            if (rows.Length != ids.Length || rows.Any(r => r.Length != ids[0].Length))
                throw new ArgumentException($"{name} must have the shape of --input-ids [{ids.Length}, {ids[0].Length}]; got rows of length {string.Join(", ", rows.Select(r => r.Length))}");
        }
    }

    static long? FirstOrNull(this IEnumerable<long> xs, Func<long, bool> pred)
    {
        foreach (var x in xs) if (pred(x)) return x;
        return null;
    }

    static Tensor Rows(long[][] rows) => tensor(rows.SelectMany(r => r).ToArray(), new long[] { rows.Length, rows[0].Length });
}
