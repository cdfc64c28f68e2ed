using System.Text.Json;
using System.Text.Json.Nodes;
using PeftSharp.Tokenization;

namespace PeftSharp.Training.Data;

/// <summary>How records become training rows (LLaMA-Factory's names where they exist).</summary>
public sealed record DataOptions
{
    /// <summary>Null: detected from the first record.</summary>
    public DatasetFormat? Format { get; init; }
    public PromptTemplate? Template { get; init; }
    public int CutoffLen { get; init; } = 1024;
    public bool TrainOnPrompt { get; init; }
    /// <summary>Concatenate rows (each ending in eos) into cutoff_len blocks (null: on for stage pt, off for sft).</summary>
    public bool? Packing { get; init; }
    /// <summary>Held-out share: a fraction in (0, 1) or a row count (>= 1); 0 for none.</summary>
    public double ValSize { get; init; }
    public int Seed { get; init; } = 42;
    /// <summary>Class names → ids for string labels (config.json's label2id).</summary>
    public IReadOnlyDictionary<string, int>? LabelMap { get; init; }
    /// <summary>sft (prompt/answer pairs, prompts masked) or pt (documents as plain text).</summary>
    public string Stage { get; init; } = "sft";
    /// <summary>Train on the last turn only; earlier turns are kept from the end while they fit.</summary>
    public bool MaskHistory { get; init; }
    /// <summary>Keep the first N rows of each dataset.</summary>
    public int? MaxSamples { get; init; }
    public string MixStrategy { get; init; } = "concat";
    public IReadOnlyList<double>? InterleaveProbs { get; init; }
    /// <summary>Receives one line per dataset that lost rows (how many and why).</summary>
    public Action<string>? Warn { get; init; }
    /// <summary>The recipe file, for messages about its keys (val_size, cutoff_len).</summary>
    public string? Source { get; init; }
    /// <summary>The model's vocab_size: pre-tokenized ids and labels must lie below it (null: not checked).</summary>
    public int? VocabSize { get; init; }
}

/// <summary>
/// Reads datasets into tokenized rows as LLaMA-Factory's processors do: conversations through the template, prompt and
/// answer of each turn shortened together to fit cutoff_len (infer_seqlen) with prompts masked (-100); stage pt
/// concatenates documents into cutoff_len blocks. Several datasets are mixed (mix_strategy), then split (val_size).
/// </summary>
public static class DatasetBuilder
{
    public static (List<TrainExample> Train, List<TrainExample> Eval) Load(string path, HfTokenizer? tokenizer, DataOptions options) =>
        Load([new DatasetSource(path, path, options.Format, DatasetAttr.PlainFile)], null, tokenizer, options);

    public static (List<TrainExample> Train, List<TrainExample> Eval) Load(IReadOnlyList<DatasetSource> sources, IReadOnlyList<DatasetSource>? evalSources,
        HfTokenizer? tokenizer, DataOptions options)
    {
        if (options.CutoffLen <= 0) throw new PeftConfigException($"cutoff_len must be positive (found {options.CutoffLen})");
        var train = Mix(sources.Select(s => Rows(s, tokenizer, options)).ToList(), options);
        List<TrainExample> eval;
        if (evalSources is { Count: > 0 }) eval = Mix(evalSources.Select(s => Rows(s, tokenizer, options)).ToList(), options);
        else
        {
            try { (train, eval) = Split(train, options.ValSize, options.Seed); }
            catch (PeftConfigException e) when (options.Source is { } src) { throw new PeftConfigException($"{src}: {e.Message}"); }
        }
        bool pt = options.Stage == "pt";
        if ((options.Packing ?? pt) && train.All(r => r.ClassLabel is null))
        {
            train = pt ? Blocks(train, options.CutoffLen, tokenizer) : Pack(train, options.CutoffLen);
            if (train.Count == 0)
                throw new PeftConfigException($"stage pt: the datasets hold fewer tokens than one block of cutoff_len {options.CutoffLen}; lower cutoff_len or add data");
        }
        return (train, eval);
    }

    static List<TrainExample> Rows(DatasetSource source, HfTokenizer? tokenizer, DataOptions o)
    {
        var records = DatasetReader.Read(source.File);
        if (source.Attr.NumSamples is int n)
        {
            // dataset_info's num_samples: a seeded random subset (with repeats when it asks for more rows than there are).
            var rng = new Random(o.Seed);
            var order = Enumerable.Range(0, records.Count).ToArray();
            rng.Shuffle(order);
            records = Enumerable.Range(0, n).Select(i => records[i < order.Length ? order[i] : rng.Next(records.Count)]).ToList();
        }
        if (o.MaxSamples is int max && records.Count > max) records = records.Take(max).ToList();
        var format = source.Format ?? o.Format ?? DatasetFormats.Detect(records[0]);
        var dropped = new Dictionary<string, int>();
        var rows = new List<TrainExample>();
        using (var progress = Runtime.PeftProgress.Begin($"tokenizing {Path.GetFileName(source.File)}", records.Count, "rows"))
            for (int i = 0; i < records.Count; i++)
            {
                var (row, reason) = Encode(records[i], format, source.Attr, tokenizer, o);
                if (row is not null) rows.Add(row);
                else dropped[reason!] = dropped.GetValueOrDefault(reason!) + 1;
                progress.Report(i + 1);
            }
        foreach (var (reason, count) in dropped)
            o.Warn?.Invoke($"{source.File}: dropped {count} of {records.Count} rows: {reason}");
        if (rows.Count == 0) throw new PeftFormatException(source.File, $"no row is left to train on ({string.Join("; ", dropped.Keys)})");
        return rows;
    }

    /// <summary>LLaMA-Factory's merge_dataset: concat, or interleave until the first (under) or every (over, once) dataset is used up.</summary>
    static List<TrainExample> Mix(List<List<TrainExample>> sets, DataOptions o)
    {
        if (sets.Count == 1 || o.MixStrategy == "concat") return sets.SelectMany(x => x).ToList();
        var result = new List<TrainExample>();
        var next = new int[sets.Count];
        var used = new bool[sets.Count];
        bool Done() => o.MixStrategy == "interleave_under" ? used.Any(u => u) : used.All(u => u);
        var rng = new Random(o.Seed);
        int turn = 0;
        // Round robin (no probabilities) stops only after a full round, as HF's interleave_datasets does.
        while (!(Done() && (o.InterleaveProbs is not null || turn % sets.Count == 0)))
        {
            int k = o.InterleaveProbs is { } p ? Pick(p, rng) : turn++ % sets.Count;
            if (o.MixStrategy == "interleave_once" && next[k] >= sets[k].Count) { if (used.All(u => u)) break; continue; }
            result.Add(sets[k][next[k] % sets[k].Count]);
            if (++next[k] >= sets[k].Count) used[k] = true;
        }
        return result;
    }

    static int Pick(IReadOnlyList<double> probs, Random rng)
    {
        double x = rng.NextDouble(), acc = 0;
        for (int i = 0; i < probs.Count; i++) if ((acc += probs[i]) > x) return i;
        return probs.Count - 1;
    }

    /// <summary>One record as a row, or null with the reason it is dropped.</summary>
    public static (TrainExample? Row, string? Dropped) Encode(DatasetRecord r, DatasetFormat format, DatasetAttr attr, HfTokenizer? tokenizer, DataOptions o)
    {
        if (format == DatasetFormat.Tokenized) return (Tokenized(r, o.CutoffLen, o.VocabSize), null);
        var tok = tokenizer ?? throw r.Error($"the {format} format needs the model's tokenizer (tokenizer.json in the model folder)");
        if (format == DatasetFormat.Classification)
        {
            var ids = tok.Encode(DatasetFormats.RequiredString(r, "text")).Take(o.CutoffLen).ToArray();
            return (new TrainExample { InputIds = ids, ClassLabel = ClassLabel(r, o.LabelMap) }, null);
        }
        if (o.Stage == "pt" || format == DatasetFormat.Text)
        {
            string text = format == DatasetFormat.Text ? DatasetFormats.RequiredString(r, "text") : DatasetFormats.DocumentText(r, format, attr);
            return (Document(text, tok, o), null);
        }
        var (conversation, skipped) = DatasetFormats.ToConversation(r, format, attr);
        if (conversation is null) return (null, skipped);
        var row = Supervised(Pairs(r, conversation, tok, o), o);
        // A row whose answers were all cut off has nothing to learn from (and a 0/0 loss alone).
        return row.Labels!.Any(l => l != (int)Losses.IgnoreIndex) ? (row, null) : (null, $"no answer token left after truncation to cutoff_len {o.CutoffLen}");
    }

    /// <summary>Stage pt: the document and eos (bos first when the tokenizer adds one), cut at cutoff_len unless packing joins documents.</summary>
    static TrainExample Document(string text, HfTokenizer tok, DataOptions o)
    {
        if (o.Stage != "pt")
        {
            var plain = tok.Encode(text).ToList();
            if (tok.EosTokenId is int e) plain.Add(e);
            var cut = plain.Take(o.CutoffLen).ToArray();
            return new TrainExample { InputIds = cut, Labels = cut };
        }
        // LLaMA-Factory ends documents with the eos string ("<|end_of_text|>" for template llama3); bos leads each
        // document unless packing joins them (then it leads each block).
        bool packing = o.Packing ?? true;
        var eos = o.Template?.Name == "llama3" ? "<|end_of_text|>" : tok.EosToken ?? "";
        var bos = !packing && tok.AddBosToken ? tok.BosToken ?? "" : "";
        var ids = tok.Encode(bos + text + eos, addSpecialTokens: false).ToArray();
        if (!packing) ids = ids.Take(o.CutoffLen).ToArray();
        return new TrainExample { InputIds = ids, Labels = ids };
    }

    /// <summary>(prompt ids, answer ids) per turn: the LLaMA-Factory template's own encoding, or a Jinja chat template rendered turn by turn.</summary>
    static List<(int[] Source, int[] Target)> Pairs(DatasetRecord r, Conversation c, HfTokenizer tok, DataOptions o)
    {
        var template = o.Template ?? PromptTemplate.BuiltIn("empty")!;
        if (template.LlamaFactory is { } lf)
            return lf.EncodeMultiturn(tok, c.Turns, c.System, c.Tools, o.MaskHistory && !lf.PreserveThinking);
        var messages = new List<ChatMessage>();
        if (c.System.Length > 0) messages.Add(new("system", c.System));
        messages.AddRange(c.Turns.Select(t => t.Role switch { "function" => t with { Role = "assistant" }, "observation" => t with { Role = "tool" }, _ => t }));
        int offset = messages.Count - c.Turns.Count;
        var pairs = new List<(int[], int[])>();
        string done = "";
        bool first = true;
        for (int i = offset + 1; i < messages.Count; i += 2)
        {
            var prompt = template.Render(messages.Take(i).ToList(), true);
            var full = template.Render(messages.Take(i + 1).ToList(), false);
            if (!prompt.StartsWith(done, StringComparison.Ordinal) || !full.StartsWith(prompt, StringComparison.Ordinal))
                throw r.Error($"template '{template.Name}' does not render this conversation incrementally, so prompt tokens cannot be masked");
            var source = tok.Encode(prompt[done.Length..], addSpecialTokens: false).ToList();
            if (first && template.AddBos && tok.AddBosToken && tok.BosTokenId is int bos) source.Insert(0, bos);
            var target = tok.Encode(full[prompt.Length..], addSpecialTokens: false).ToList();
            if (template.AppendEos) target.Add(tok.EosTokenId ?? throw r.Error("the tokenizer has no eos token to end responses with"));
            pairs.Add((source.ToArray(), target.ToArray()));
            done = full; first = false;
        }
        return pairs;
    }

    /// <summary>LLaMA-Factory's infer_seqlen: how much of a prompt and its answer to keep within <paramref name="cutoff"/>.</summary>
    public static (int Source, int Target) InferSeqlen(int source, int target, int cutoff)
    {
        int maxTarget = target * 2 < cutoff ? cutoff : source * 2 < cutoff ? cutoff - source : (int)(cutoff * ((double)target / (source + target)));
        int newTarget = Math.Min(maxTarget, target);
        int newSource = Math.Min(Math.Max(cutoff - newTarget, 0), source);
        return (newSource, newTarget);
    }

    /// <summary>The supervised processor: turns in order (last first with mask_history) until cutoff_len is used up.</summary>
    static TrainExample Supervised(List<(int[] Source, int[] Target)> pairs, DataOptions o)
    {
        var ids = new List<int>(); var labels = new List<int>();
        int total = 0, ignore = (int)Losses.IgnoreIndex;
        var order = o.MaskHistory ? Enumerable.Reverse(pairs).ToList() : pairs;
        for (int turn = 0; turn < order.Count; turn++)
        {
            if (total >= o.CutoffLen) break;
            var (sl, tl) = InferSeqlen(order[turn].Source.Length, order[turn].Target.Length, o.CutoffLen - total);
            var source = order[turn].Source[..sl]; var target = order[turn].Target[..tl];
            total += sl + tl;
            var sourceLabels = o.TrainOnPrompt ? source : Enumerable.Repeat(ignore, sl).ToArray();
            var targetLabels = o.MaskHistory && turn != 0 ? Enumerable.Repeat(ignore, tl).ToArray() : target;
            if (o.MaskHistory) { ids.InsertRange(0, [.. source, .. target]); labels.InsertRange(0, [.. sourceLabels, .. targetLabels]); }
            else { ids.AddRange(source); ids.AddRange(target); labels.AddRange(sourceLabels); labels.AddRange(targetLabels); }
        }
        return new TrainExample { InputIds = ids.ToArray(), Labels = labels.ToArray() };
    }

    /// <summary>Stage pt with packing: all documents joined and cut into cutoff_len blocks (the remainder dropped), bos first when the tokenizer adds one.</summary>
    static List<TrainExample> Blocks(List<TrainExample> docs, int cutoff, HfTokenizer? tok)
    {
        var ids = docs.SelectMany(d => d.InputIds).ToArray();
        var blocks = new List<TrainExample>();
        for (int s = 0; s + cutoff <= ids.Length; s += cutoff)
        {
            var block = ids[s..(s + cutoff)];
            if (tok is { AddBosToken: true, BosTokenId: int bos }) block[0] = bos;
            blocks.Add(new TrainExample { InputIds = block, Labels = block });
        }
        return blocks;
    }

    static int[] IntArray(DatasetRecord r, string key, bool required)
    {
        var node = r.Json[key];
        if (node is null) return required ? throw r.Error($"missing field '{key}'") : Array.Empty<int>();
        if (node is not JsonArray arr) throw r.Error($"field '{key}' must be a list of integers");
        var result = new int[arr.Count];
        for (int i = 0; i < arr.Count; i++)
            result[i] = arr[i] is JsonValue v && v.GetValueKind() == JsonValueKind.Number && v.TryGetValue<int>(out var x) ? x
                : throw r.Error($"field '{key}' must be a list of integers (item {i} is {arr[i]?.ToJsonString() ?? "null"})");
        return result;
    }

    // An id past the embedding table would fail deep inside a forward pass (or read another row's memory on some backends).
    static void CheckIds(DatasetRecord r, string key, int[]? ids, int? vocab, bool allowIgnore)
    {
        if (ids is null) return;
        for (int i = 0; i < ids.Length; i++)
            if (ids[i] < 0 && !(allowIgnore && ids[i] == (int)Losses.IgnoreIndex) || vocab is { } v && ids[i] >= v)
                throw r.Error($"'{key}'[{i}] is {ids[i]}; expected a token id in [0, {(vocab is { } n ? n.ToString() : "vocab_size")})" + (allowIgnore ? " or -100" : ""));
    }

    static TrainExample Tokenized(DatasetRecord r, int cutoff, int? vocab)
    {
        var ids = IntArray(r, "input_ids", true);
        if (ids.Length == 0) throw r.Error("'input_ids' is empty");
        var mask = r.Json.ContainsKey("attention_mask") ? IntArray(r, "attention_mask", true) : null;
        var labels = r.Json.ContainsKey("labels") ? IntArray(r, "labels", true) : null;
        if (mask is not null && mask.Length != ids.Length) throw r.Error($"'attention_mask' has {mask.Length} entries but 'input_ids' has {ids.Length}");
        if (labels is not null && labels.Length != ids.Length) throw r.Error($"'labels' has {labels.Length} entries but 'input_ids' has {ids.Length}");
        CheckIds(r, "input_ids", ids, vocab, allowIgnore: false);
        CheckIds(r, "labels", labels, vocab, allowIgnore: true);
        if (mask?.FirstOrDefault(m => m is not (0 or 1), 0) is int bad && bad != 0)
            throw r.Error($"'attention_mask' holds {bad}; expected 0 or 1");
        int n = Math.Min(ids.Length, cutoff);
        // A scalar "label" makes it a classification row (labels per token are for language modelling).
        int? classLabel = r.Json["label"] is JsonValue ? ClassLabel(r, null) : null;
        return new TrainExample { InputIds = ids[..n], AttentionMask = mask?[..n], Labels = labels?[..n], ClassLabel = classLabel };
    }

    static int ClassLabel(DatasetRecord r, IReadOnlyDictionary<string, int>? map)
    {
        var v = r.Json["label"] ?? throw r.Error("missing field 'label'");
        switch (v.GetValueKind())
        {
            case JsonValueKind.Number:
            {
                if (!v.AsValue().TryGetValue<int>(out var id)) throw r.Error($"label {v.ToJsonString()} is not an integer class id");
                return id >= 0 ? id : throw r.Error($"label {id} is negative");
            }
            case JsonValueKind.String:
                var name = v.GetValue<string>();
                if (map is not null && map.TryGetValue(name, out var mapped)) return mapped;
                throw r.Error($"label '{name}' is not a class id" + (map is null ? " and the model config has no label2id" : $" (known: {string.Join(", ", map.Keys)})"));
            default:
                throw r.Error($"'label' must be an integer class id or a class name (found {v.GetValueKind()})");
        }
    }

    /// <summary>A seeded shuffle, then the first val rows are held out (a fraction in (0,1) or a count).</summary>
    public static (List<TrainExample> Train, List<TrainExample> Eval) Split(List<TrainExample> rows, double valSize, int seed)
    {
        if (valSize <= 0) return (rows, new List<TrainExample>());
        int n = valSize < 1 ? (int)Math.Ceiling(valSize * rows.Count) : (int)valSize;
        if (n >= rows.Count) throw new PeftConfigException($"val_size {valSize} leaves no training rows (the dataset has {rows.Count})");
        var order = Enumerable.Range(0, rows.Count).ToArray();
        new Random(seed).Shuffle(order);
        return (order.Skip(n).Select(i => rows[i]).ToList(), order.Take(n).Select(i => rows[i]).ToList());
    }

    /// <summary>Concatenates rows (labels included) and cuts the stream into blocks of <paramref name="cutoff"/> tokens.</summary>
    public static List<TrainExample> Pack(List<TrainExample> rows, int cutoff)
    {
        var ids = rows.SelectMany(r => r.InputIds).ToArray();
        var labels = rows.SelectMany(r => r.Labels ?? r.InputIds).ToArray();
        var packed = new List<TrainExample>();
        for (int s = 0; s < ids.Length; s += cutoff)
        {
            int n = Math.Min(cutoff, ids.Length - s);
            packed.Add(new TrainExample { InputIds = ids[s..(s + n)], Labels = labels[s..(s + n)] });
        }
        return packed;
    }
}
