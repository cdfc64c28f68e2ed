using PeftSharp.Models;
using PeftSharp.Tokenization;
using PeftSharp.Training.Data;

namespace PeftSharp.Training.Recipes;

/// <summary>The datasets a recipe names (dataset, eval_dataset via dataset_dir/dataset_info.json), loaded and mixed.</summary>
public static class RecipeData
{
    public static (List<TrainExample> Train, List<TrainExample> Eval) Load(TrainConfig c, PreTrainedModel model, HfTokenizer? tokenizer, DataOptions options)
    {
        if (model.Config.ContextLength is var max && c.CutoffLen > max)
            options.Warn?.Invoke($"cutoff_len {c.CutoffLen} is larger than the model's max_position_embeddings {max} ({c.ModelNameOrPath}); rows longer than {max} tokens go beyond the positions it was trained on");
        var train = DatasetRegistry.Resolve(c.Dataset, c.Recipe.DatasetDir, c.ResolvePath, $"{c.Source}: dataset");
        var eval = c.Recipe.EvalDataset is { } e ? DatasetRegistry.Resolve(e, c.Recipe.DatasetDir, c.ResolvePath, $"{c.Source}: eval_dataset") : null;
        return DatasetBuilder.Load(train, eval, tokenizer, options);
    }
}
