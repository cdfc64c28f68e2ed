using Microsoft.Extensions.AI;

namespace PeftSharp.Inference;

/// <summary>Microsoft.Extensions.AI's <see cref="ChatOptions"/> as generation options (both chat clients use it).</summary>
public static class ChatOptionsMapping
{
    /// <summary>
    /// Temperature 0 is greedy decoding, anything else (default 1) samples; TopK null is off; MaxOutputTokens null gives
    /// <paramref name="defaultMaxTokens"/>; StopSequences become stop strings.
    /// </summary>
    public static GenerationOptions ToGenerationOptions(ChatOptions? options, int defaultMaxTokens)
    {
        var temperature = options?.Temperature ?? 1f;
        return new GenerationOptions
        {
            MaxNewTokens = options?.MaxOutputTokens ?? defaultMaxTokens,
            DoSample = temperature > 0,
            Temperature = temperature > 0 ? temperature : 1.0,
            TopP = options?.TopP ?? 1.0,
            TopK = options?.TopK ?? 0,
            Seed = options?.Seed is long s ? unchecked((ulong)s) : null,
            StopStrings = options?.StopSequences?.ToArray() ?? Array.Empty<string>(),
        };
    }
}
