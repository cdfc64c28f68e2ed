using System.Runtime.InteropServices;

namespace PeftSharp.Cli;

/// <summary>
/// The one place that turns an exception into what the user sees: one line on stderr and an exit code.
/// Errors caused by input (files, options, limits) exit 1; anything else is a PeftSharp bug and says so (exit 70).
/// --verbose adds the stack trace.
/// </summary>
public static class ErrorReporter
{
    public const int UserError = 1;
    public const int InternalError = 70; // EX_SOFTWARE
    public const int OutOfMemory = 71;
    public const int Cancelled = 130; // as a shell reports SIGINT

    public static int Report(Exception e, TextWriter stderr, bool verbose)
    {
        var (code, line) = Classify(e);
        stderr.WriteLine(line);
        if (verbose) stderr.WriteLine(e);
        return code;
    }

    public static (int Code, string Line) Classify(Exception e)
    {
        e = Unwrap(e);
        return e switch
        {
            OperationCanceledException => (Cancelled, "error: cancelled"),
            PeftSharpException or ArgumentException or FormatException => (UserError, $"error: {OneLine(e.Message)}"),
            FileNotFoundException or DirectoryNotFoundException or UnauthorizedAccessException or IOException
                => (UserError, $"error: {OneLine(e.Message)}"),
            OutOfMemoryException or InsufficientExecutionStackException
                => (OutOfMemory, $"error: out of memory ({OneLine(e.Message)}); try a smaller model, batch or --dtype bfloat16"),
            ExternalException x when x.Message.Contains("can't allocate memory", StringComparison.Ordinal)
                => (OutOfMemory, $"error: out of memory ({FirstLine(x.Message)}); try a smaller model, batch or --dtype bfloat16"),
            _ => (InternalError, $"error: internal error, this is a bug in PeftSharp ({e.GetType().Name}: {FirstLine(e.Message)}); " +
                                 "please report it with the output of --verbose"),
        };
    }

    // Wrappers add nothing the user can act on: report what they carry.
    static Exception Unwrap(Exception e)
    {
        while (e is AggregateException { InnerExceptions.Count: 1 } or System.Reflection.TargetInvocationException or TypeInitializationException
               && e.InnerException is { } inner)
            e = inner;
        return e;
    }

    static string FirstLine(string s) => s.Split('\n', 2)[0].TrimEnd('\r');

    static string OneLine(string s) => s.Replace("\r\n", " ").Replace('\n', ' ');
}
