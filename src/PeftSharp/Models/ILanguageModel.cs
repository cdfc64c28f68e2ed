using static TorchSharp.torch;

namespace PeftSharp.Models;

/// <summary>
/// What generation and evaluation need from a model: its config, a forward and a fresh KV cache. Implemented
/// by <see cref="PreTrainedModel"/> and by a PeftModel, so prompt-family adapters (which change the inputs
/// and seed the cache) generate through the same code as plain models.
/// </summary>
public interface ILanguageModel
{
    ModelConfig Config { get; }
    bool IsCausalLM { get; }
    Device Device { get; }
    ModelOutput Forward(ModelInputs inputs);
    KVCache NewCache();

    /// <summary>
    /// False when a forward over a longer sequence changes the states of earlier positions (AdapterHub's UniPELT gates
    /// average over the sequence): then generation reruns the whole sequence each step instead of using a cache.
    /// </summary>
    bool SupportsKVCache => true;
}
