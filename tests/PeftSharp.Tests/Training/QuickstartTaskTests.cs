using PeftSharp.Training.Quickstart;

namespace PeftSharp.Tests.Training;

public class QuickstartTaskTests
{
    /// <summary>
    /// Both phases train on the answer only: the prompt's word is random letters, and learning to predict them slowed
    /// the base's copy skill enough that LoRA then failed reversal from some seeds.
    /// </summary>
    [Theory]
    [InlineData("cp")]
    [InlineData("rv")]
    public void Rows_train_on_the_answer_and_eos_only(string op)
    {
        var task = new QuickstartTask(7);
        var rows = op == "cp" ? task.Pretraining(50) : task.FineTuning(50);
        Assert.Equal(50, rows.Count);
        foreach (var row in rows)
        {
            var text = QuickstartTask.Decode(row.InputIds);
            var eq = text.IndexOf('=');
            Assert.StartsWith(op + " ", text);
            var word = text[(op.Length + 1)..eq];
            var answer = text[(eq + 1)..];
            Assert.Equal(op == "rv" ? QuickstartTask.Reverse(word) : word, answer);

            // bos + "op word=" are masked; the answer's tokens and eos are the labels.
            int promptLength = 1 + op.Length + 1 + word.Length + 1;
            Assert.Equal(row.InputIds.Length, row.Labels!.Length);
            Assert.All(row.Labels.Take(promptLength), l => Assert.Equal(-100, l));
            Assert.Equal(row.InputIds.Skip(promptLength), row.Labels.Skip(promptLength));
            Assert.Equal(QuickstartTask.Eos, row.Labels[^1]);
        }
    }
}
