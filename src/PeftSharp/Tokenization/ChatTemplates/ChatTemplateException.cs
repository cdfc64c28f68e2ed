namespace PeftSharp.Tokenization.ChatTemplates;

/// <summary>A chat template could not be parsed or rendered: the message names the construct and the template line.</summary>
public class ChatTemplateException : PeftSharpException
{
    public int Line { get; }

    public ChatTemplateException(string message, int line = 0)
        : base(line > 0 ? $"chat template, line {line}: {message}" : $"chat template: {message}") => Line = line;

    protected ChatTemplateException(string message, bool verbatim) : base(message) { }
}

/// <summary>The template itself called <c>raise_exception(message)</c>; <see cref="Exception.Message"/> is the template's text.</summary>
public sealed class ChatTemplateRaisedException : ChatTemplateException
{
    public ChatTemplateRaisedException(string message) : base(message, verbatim: true) { }
}
