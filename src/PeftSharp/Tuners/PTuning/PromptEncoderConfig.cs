using System.Text.Json.Nodes;
using PeftSharp.Tuners.PromptLearning;

namespace PeftSharp.Tuners.PTuning;

/// <summary>peft's <c>PromptEncoderConfig</c> (peft_type P_TUNING): virtual tokens reparameterized by an MLP or LSTM encoder.</summary>
public sealed record PromptEncoderConfig : PromptLearningConfig
{
    public override string PeftType => "P_TUNING";
    /// <summary>MLP (default) or LSTM.</summary>
    public string EncoderReparameterizationType { get; init; } = "MLP";
    /// <summary>Hidden size of the encoder; null = token_dim.</summary>
    public int? EncoderHiddenSize { get; init; }
    /// <summary>LSTM layers (the MLP always has three linears, as in peft).</summary>
    public int EncoderNumLayers { get; init; } = 2;
    /// <summary>LSTM dropout (unused by the MLP, as in peft).</summary>
    public double EncoderDropout { get; init; }

    public static PromptEncoderConfig FromJson(JsonObject json, string source)
    {
        var r = new ConfigReader(json, source);
        var c = ReadPrompt(new PromptEncoderConfig(), r) with
        {
            EncoderReparameterizationType = r.String("encoder_reparameterization_type") ?? "MLP",
            EncoderHiddenSize = NullableInt(r, "encoder_hidden_size", AdapterSize.MaxWidth),
            EncoderNumLayers = r.Int("encoder_num_layers", 2, 1, AdapterSize.MaxLayers),
            EncoderDropout = r.Double("encoder_dropout", 0.0),
        };
        PeftMethods.WarnUnknown(r);
        c.Validate(source);
        return c;
    }

    public void Validate(string source = "PromptEncoderConfig")
    {
        if (EncoderReparameterizationType is not ("MLP" or "LSTM"))
            throw new PeftConfigException($"{source}: 'encoder_reparameterization_type' must be MLP or LSTM; found '{EncoderReparameterizationType}'");
        if (EncoderNumLayers <= 0) throw new PeftConfigException($"{source}: 'encoder_num_layers' must be positive; found {EncoderNumLayers}");
        if (EncoderDropout is < 0 or >= 1) throw new PeftConfigException($"{source}: 'encoder_dropout' must be in [0, 1); found {EncoderDropout}");
    }

    /// <summary>The virtual-token table, plus (training) the MLP's three linears or the bidirectional LSTM and its MLP.</summary>
    public override long LearnerElements()
    {
        long d = TokenDim ?? 0, h = EncoderHiddenSize ?? d;
        long table = AdapterSize.Mul(TotalVirtualTokens, d);
        if (InferenceMode) return table;
        long encoder = EncoderReparameterizationType == "LSTM"
            ? AdapterSize.Add(AdapterSize.Mul(AdapterSize.Mul(EncoderNumLayers, 8 * h), Math.Max(d, 2 * h) + h + 2), AdapterSize.Mul(2 * h + 1, 2 * h + d))
            : AdapterSize.Mul(h + 1, 2 * d + h + 1);
        return AdapterSize.Add(table, encoder);
    }

    protected override void WriteFields(JsonObject o)
    {
        base.WriteFields(o);
        o["encoder_reparameterization_type"] = EncoderReparameterizationType;
        o["encoder_hidden_size"] = EncoderHiddenSize;
        o["encoder_num_layers"] = EncoderNumLayers;
        o["encoder_dropout"] = EncoderDropout;
    }
}
