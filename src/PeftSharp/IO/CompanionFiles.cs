namespace PeftSharp.IO;

/// <summary>
/// The files that travel with a model's weights when a command writes a new model folder (merge, quantize): the
/// tokenizer (fast and slow), its special tokens and chat templates, and generation_config.json. Nothing else: a
/// training output folder also holds trainer_state.json, checkpoints, logs and plots, which do not belong to the model.
/// </summary>
public static class CompanionFiles
{
    public static readonly IReadOnlyList<string> Names =
    [
        "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
        "generation_config.json", "chat_template.jinja", "chat_template.json",
        "vocab.json", "merges.txt", "vocab.txt", "tokenizer.model", "spiece.model",
    ];

    /// <summary>transformers' folder of named chat templates (<c>additional_chat_templates/NAME.jinja</c>).</summary>
    public const string TemplatesFolder = "additional_chat_templates";

    /// <summary>
    /// Copies the companion files of <paramref name="modelDir"/> into <paramref name="outDir"/>. When
    /// <paramref name="tokenizerDir"/> (an adapter or training output) has its own tokenizer.json, the tokenizer files
    /// come from there (a run may have added tokens); generation_config.json always comes from the model. Returns the names copied.
    /// </summary>
    public static IReadOnlyList<string> Copy(string modelDir, string outDir, string? tokenizerDir = null)
    {
        modelDir = HfHubCache.ResolveFolder(modelDir);
        var tokenizerSource = tokenizerDir is not null && File.Exists(Path.Combine(tokenizerDir, "tokenizer.json")) ? tokenizerDir : modelDir;
        var copied = new List<string>();
        Directory.CreateDirectory(outDir);
        foreach (var name in Names)
        {
            var src = Path.Combine(name == "generation_config.json" ? modelDir : tokenizerSource, name);
            if (!File.Exists(src)) continue;
            AtomicFile.Write(Path.Combine(outDir, name), s => { using var f = File.OpenRead(src); f.CopyTo(s); });
            copied.Add(name);
        }
        var templates = Path.Combine(tokenizerSource, TemplatesFolder);
        if (Directory.Exists(templates))
        {
            var dst = Directory.CreateDirectory(Path.Combine(outDir, TemplatesFolder)).FullName;
            foreach (var f in Directory.EnumerateFiles(templates, "*.jinja"))
            {
                AtomicFile.Write(Path.Combine(dst, Path.GetFileName(f)), s => { using var src = File.OpenRead(f); src.CopyTo(s); });
                copied.Add(Path.Combine(TemplatesFolder, Path.GetFileName(f)));
            }
        }
        return copied;
    }
}
