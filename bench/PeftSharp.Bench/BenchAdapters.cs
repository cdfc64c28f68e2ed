using System.Text.Json.Nodes;
using PeftSharp.Models;
using PeftSharp.Tuners;
using static TorchSharp.torch;

namespace PeftSharp.Bench;

/// <summary>
/// The adapters the benches measure, built through a method's recipe from its keys as <c>peft train</c> builds them,
/// so a bench names a finetuning_type, not a method's config type.
/// </summary>
static class BenchAdapters
{
    /// <summary>LLaMA-Factory's LoRA arguments: rank <paramref name="r"/>, alpha 2r, on <paramref name="target"/> ("all": every linear layer but the head).</summary>
    public static RecipeSettings Lora(int r, string target = "all") => new() { LoraRank = r, LoraAlpha = 2 * r, LoraTarget = target, Source = "bench" };

    /// <summary>The adapter config finetuning_type <paramref name="type"/> builds from these settings and keys (checked as a recipe is).</summary>
    public static PeftConfig Config(PreTrainedModel model, string type, RecipeSettings settings, Dictionary<string, JsonNode?>? keys = null)
    {
        var recipe = PeftMethods.Recipe(type).Recipe;
        var bag = new RecipeKeys(keys ?? new(), settings.Source);
        recipe.Check(bag, settings);
        return recipe.Config(new RecipeContext { Model = model, Keys = bag, Settings = settings });
    }

    public static PeftModel Create(PreTrainedModel model, string type, RecipeSettings settings, Dictionary<string, JsonNode?>? keys = null, string adapterName = "default") =>
        PeftModel.Create(model, Config(model, type, settings, keys), adapterName);

    /// <summary>Random up-projections (LoRA starts them at zero, which would make every adapter the base model).</summary>
    public static void RandomizeUp(PeftModel peft, double std)
    {
        using var _ = no_grad();
        foreach (var (_, p) in peft.named_parameters().Where(p => p.name.Contains("lora_B"))) p.normal_(0, std);
    }
}
