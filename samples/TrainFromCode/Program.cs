using PeftSharp.Inference;
using PeftSharp.Models;
using PeftSharp.Tokenization;
using PeftSharp.Training;
using PeftSharp.Training.Data;
using PeftSharp.Tuners;
using PeftSharp.Tuners.Lora;
using static TorchSharp.torch;

namespace PeftSharp.Samples;

/// <summary>
/// LoRA fine-tuning from C#: `dotnet run --project samples/TrainFromCode -- MODEL_DIR DATA.jsonl OUTPUT_DIR`
/// (e.g. quickstart-output/base, samples/data/reverse_sft.jsonl). The README shows the body of <see cref="Run"/>.
/// </summary>
public static class TrainFromCode
{
    public static int Main(string[] args)
    {
        if (args.Length != 3)
        {
            Console.Error.WriteLine("usage: TrainFromCode MODEL_DIR DATA.jsonl OUTPUT_DIR");
            return 2;
        }
        Run(args[0], args[1], args[2], maxSteps: 100);
        return 0;
    }

    public static string Run(string modelDir, string dataset, string outputDir, int maxSteps)
    {
        // README begin
        using var model = AutoModel.FromPretrained(modelDir, device: CPU);   // disposing the model frees its native memory
        var tokenizer = HfTokenizer.FromFolder(modelDir);
        var peft = PeftModel.Create(model, new LoraConfig { R = 8, LoraAlpha = 16, TargetModules = StringOrList.Of(["q_proj", "v_proj"]) });
        Console.WriteLine(peft.PrintTrainableParameters());                  // trainable params: ... || all params: ... || trainable%: ...

        var data = new DataOptions { Template = PromptTemplate.Resolve("alpaca", modelDir, tokenizer), CutoffLen = 256, ValSize = 2 };
        var (train, eval) = DatasetBuilder.Load(dataset, tokenizer, data);   // alpaca / sharegpt / messages / text JSONL
        var args = new TrainingArguments
        {
            OutputDir = outputDir, MaxSteps = maxSteps, LearningRate = 1e-3, PerDeviceTrainBatchSize = 4, LoggingSteps = 10,
            ReportTo = ["tensorboard"],
        };
        using var trainer = new Trainer(AdapterTargets.Peft(peft), args, train, eval);
        trainer.Logged += entry => Console.WriteLine(entry.ToJsonString());  // what trainer_log.jsonl gets
        var result = trainer.Train();                                         // ends by saving the adapter to OutputDir
        Console.WriteLine($"{result.GlobalStep} steps, eval loss {trainer.Evaluate(eval).Loss:F3}");

        var answer = new TextGenerator(peft, tokenizer).Generate("### Instruction:\nrv abc\n\n### Response:\n", new GenerationOptions { MaxNewTokens = 8 });
        Console.WriteLine(answer);
        // README end
        return answer;
    }
}
