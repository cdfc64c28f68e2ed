using System.CommandLine;
using PeftSharp.Cli.Commands;

namespace PeftSharp.Cli;

public static class Program
{
    public static int Main(string[] args) => Run(args, Console.Out, Console.Error);

    /// <summary>Entry point tests call in process; output goes to the given writers.</summary>
    public static int Run(string[] args, TextWriter stdout, TextWriter stderr)
    {
        try
        {
            return Dispatch(args, stdout, stderr);
        }
        catch (Exception e)
        {
            // Safety net for anything thrown outside a command's action (option parsing, command construction).
            return ErrorReporter.Report(e, stderr, args.Contains("--verbose"));
        }
    }

    static int Dispatch(string[] args, TextWriter stdout, TextWriter stderr)
    {
        var root = new RootCommand("PeftSharp: parameter-efficient fine-tuning of Hugging Face LLMs for .NET");
        root.Options.Add(Cli.JsonOption);
        root.Options.Add(Cli.VerboseOption);
        // One line per command.
        root.Subcommands.Add(InfoCommand.Create());
        root.Subcommands.Add(GenerateCommand.Create());
        root.Subcommands.Add(ChatCommand.Create());
        root.Subcommands.Add(TokenizeCommand.Create());
        root.Subcommands.Add(DetokenizeCommand.Create());
        root.Subcommands.Add(ChatTemplateCommand.Create());
        root.Subcommands.Add(QuantizeCommand.Create());
        root.Subcommands.Add(ForwardCommand.Create());
        root.Subcommands.Add(MergeCommand.Create());
        root.Subcommands.Add(ExportCommand.Create());
        root.Subcommands.Add(InspectAdapterCommand.Create());
        root.Subcommands.Add(TrainCommand.Create());
        root.Subcommands.Add(EvalCommand.Create());
        root.Subcommands.Add(QuickstartCommand.Create());
        root.Subcommands.Add(ServeCommand.Create());
        root.Subcommands.Add(RouteCommand.Create());
        var parsed = root.Parse(args);
        if (parsed.Errors.Count > 0)
        {
            stderr.WriteLine($"error: {string.Join("; ", parsed.Errors.Select(e => e.Message))} (see 'peft --help')");
            return 2;
        }
        using var progress = ConsoleProgress.Install(parsed.GetValue(Cli.JsonOption), ref stdout, stderr);
        return parsed.Invoke(new InvocationConfiguration { Output = stdout, Error = stderr });
    }
}
