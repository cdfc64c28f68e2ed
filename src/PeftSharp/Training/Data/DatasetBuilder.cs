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
    /// <summary>Concatenate rows (each ending in eos) into cutoff_len blocks.</summary>
    public bool Packing { get; init; }
    /// <summary>Held-out share: a fraction in (0, 1) or a row count (>= 1); 0 for none.</summary>
    public double ValSize { get; init; }
    public int Seed { get; init; } = 42;
    /// <summary>Class names → ids for string labels (config.json's label2id).</summary>
    public IReadOnlyDictionary<string, int>? LabelMap { get; init; }
    /// <summary>The model's vocab_size: pre-tokenized ids and labels must lie below it (null: not checked).</summary>
    public int? VocabSize { get; init; }
}

/// <summary>Reads a dataset file into tokenized rows with labels masked (-100) on prompts, truncated, optionally packed and split.</summary>
public static class DatasetBuilder
{
    public static (List<TrainExample> Train, List<TrainExample> Eval) Load(string path, HfTokenizer? tokenizer, DataOptions options)
    {
        var records = DatasetReader.Read(path);
        var format = options.Format ?? DatasetFormats.Detect(records[0]);
        List<TrainExample> rows;
        using (var progress = Runtime.PeftProgress.Begin($"tokenizing {Path.GetFileName(path)}", records.Count, "rows"))
            rows = records.Select((r, i) => { progress.Report(i + 1); return Encode(r, format, tokenizer, options); }).ToList();
        if (format != DatasetFormat.Classification && rows.All(r => r.ClassLabel is null))
        {
            // A row whose response was cut off by cutoff_len has nothing to learn from (and a 0/0 loss alone).
            rows = rows.Where(r => r.Labels is null || r.Labels.Skip(1).Any(l => l != (int)Losses.IgnoreIndex)).ToList();
            if (rows.Count == 0)
                throw new PeftFormatException(path, $"no row has a label token left after truncation to cutoff_len {options.CutoffLen}; raise cutoff_len or shorten the prompts");
        }
        var (train, eval) = Split(rows, options.ValSize, options.Seed);
        if (options.Packing && rows.All(r => r.ClassLabel is null)) train = Pack(train, options.CutoffLen);
        return (train, eval);
    }

    public static TrainExample Encode(DatasetRecord r, DatasetFormat format, HfTokenizer? tokenizer, DataOptions o)
    {
        if (o.CutoffLen <= 0) throw new PeftConfigException($"cutoff_len must be positive (found {o.CutoffLen})");
        if (format == DatasetFormat.Tokenized) return Tokenized(r, o.CutoffLen, o.VocabSize);
        var tok = tokenizer ?? throw r.Error($"the {format} format needs the model's tokenizer (tokenizer.json in the model folder)");
        switch (format)
        {
            case DatasetFormat.Classification:
            {
                var ids = tok.Encode(DatasetFormats.RequiredString(r, "text")).Take(o.CutoffLen).ToArray();
                return new TrainExample { InputIds = ids, ClassLabel = ClassLabel(r, o.LabelMap) };
            }
            case DatasetFormat.Text:
            {
                var ids = tok.Encode(DatasetFormats.RequiredString(r, "text")).ToList();
                if (tok.EosTokenId is int eos) ids.Add(eos);
                var arr = ids.Take(o.CutoffLen).ToArray();
                return new TrainExample { InputIds = arr, Labels = arr };
            }
            default:
                return Conversation(r, DatasetFormats.ToMessages(r, format), tok, o);
        }
    }

    /// <summary>Prompt segments (system, user turns, assistant headers) get -100 unless train_on_prompt; responses keep their ids.</summary>
    static TrainExample Conversation(DatasetRecord r, List<ChatMessage> messages, HfTokenizer tok, DataOptions o)
    {
        var template = o.Template ?? PromptTemplate.BuiltIn("empty")!;
        var ids = new List<int>(); var labels = new List<int>();
        void Add(IEnumerable<int> tokens, bool train)
        {
            foreach (var t in tokens) { ids.Add(t); labels.Add(train ? t : (int)Losses.IgnoreIndex); }
        }
        if (template.AddBos && tok.AddBosToken && tok.BosTokenId is int bos) Add(new[] { bos }, o.TrainOnPrompt);
        string done = "";
        for (int i = 0; i < messages.Count; i++)
        {
            if (messages[i].Role != "assistant") continue;
            var prompt = template.Render(messages.Take(i).ToList(), true);
            var full = template.Render(messages.Take(i + 1).ToList(), false);
            if (!prompt.StartsWith(done, StringComparison.Ordinal) || !full.StartsWith(prompt, StringComparison.Ordinal))
                throw r.Error($"template '{template.Name}' does not render this conversation incrementally, so prompt tokens cannot be masked");
            Add(tok.Encode(prompt[done.Length..], addSpecialTokens: false), o.TrainOnPrompt);
            var response = tok.Encode(full[prompt.Length..], addSpecialTokens: false).ToList();
            if (template.AppendEos)
                response.Add(tok.EosTokenId ?? throw r.Error("the tokenizer has no eos token to end responses with"));
            Add(response, true);
            done = full;
        }
        int n = Math.Min(ids.Count, o.CutoffLen);
        return new TrainExample { InputIds = ids.Take(n).ToArray(), Labels = labels.Take(n).ToArray() };
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
