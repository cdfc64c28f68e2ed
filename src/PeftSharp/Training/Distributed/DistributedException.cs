namespace PeftSharp.Training.Distributed;

/// <summary>A data-parallel run cannot go on: ranks disagree, a collective call failed, or the others stopped answering.</summary>
public sealed class DistributedException : PeftSharpException
{
    public DistributedException(string message) : base(message) { }
}
