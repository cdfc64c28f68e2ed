namespace PeftSharp.Tokenization.ChatTemplates.Jinja;

/// <summary>Jinja2's built-in tests (`x is defined`, `x is string`, `x is divisibleby 3`, ...).</summary>
internal static class Tests
{
    public static bool Apply(string name, object? v, List<object?> args)
    {
        object? Arg(int i) => i < args.Count ? args[i] : throw new JinjaError($"the test '{name}' needs an argument");
        return name switch
        {
            "defined" => v is not Undefined,
            "undefined" => v is Undefined,
            "none" => v is null,
            "boolean" => v is bool,
            "true" => v is true,
            "false" => v is false,
            "integer" => v is long,
            "float" => v is double,
            "number" => Py.IsNumber(v),
            "string" => v is string,
            "mapping" => v is PyDict,
            "iterable" => v is string or List<object?> or PyDict or Undefined,
            "sequence" => v is string or List<object?> or PyDict or Undefined,
            "callable" => v is ICallable,
            "odd" => Py.ToLong(v) % 2 != 0,
            "even" => Py.ToLong(v) % 2 == 0,
            "divisibleby" => Py.ToLong(v) % Py.ToLong(Arg(0)) == 0,
            "eq" or "equalto" or "==" => Py.Eq(v, Arg(0)),
            "ne" or "!=" => !Py.Eq(v, Arg(0)),
            "lt" or "lessthan" or "<" => Operators.Compare("<", v, Arg(0)),
            "le" or "<=" => Operators.Compare("<=", v, Arg(0)),
            "gt" or "greaterthan" or ">" => Operators.Compare(">", v, Arg(0)),
            "ge" or ">=" => Operators.Compare(">=", v, Arg(0)),
            "in" => Py.Contains(Arg(0), v),
            "sameas" => SameAs(v, Arg(0)),
            "lower" => Py.Str(v) is var s && s == s.ToLowerInvariant(),
            "upper" => Py.Str(v) is var u && u == u.ToUpperInvariant(),
            "escaped" => false,
            _ => throw new JinjaError($"no test named '{name}'"),
        };
    }

    private static bool SameAs(object? a, object? b) => a is null || b is null || a is bool || b is bool
        ? Equals(a, b)
        : ReferenceEquals(a, b) || (a is string or long or double && Equals(a, b));
}
