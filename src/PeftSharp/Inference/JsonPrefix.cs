namespace PeftSharp.Inference;

/// <summary>
/// A pushdown automaton over characters that accepts exactly the prefixes of one JSON object (RFC 8259, with
/// whitespace around tokens): OpenAI's <c>response_format: {"type": "json_object"}</c>. A state is an immutable
/// value, so trying a token's text from the current state costs no copy; <see cref="Complete"/> turns true when
/// the top-level object closes, and after that no character is accepted.
/// </summary>
public readonly record struct JsonPrefix
{
    enum Mode : byte { Start, Value, KeyOrEnd, Key, Colon, String, Number, Literal, AfterValue, Done }

    // Number sub-states: after '-', after a leading 0, in integer digits, after '.', in fraction digits, after 'e', after the exponent's sign, in exponent digits.
    const int NumMinus = 0, NumZero = 1, NumInt = 2, NumDot = 3, NumFrac = 4, NumE = 5, NumESign = 6, NumExp = 7;
    // String flags: escape progress in the low bits (0 none, 1 after '\', 2..5 hex digits left + 1), key strings marked.
    const int KeyFlag = 16;

    readonly Mode _mode;
    /// <summary>Open containers, innermost last: '{' or '['.</summary>
    readonly string _stack;
    readonly int _aux;
    /// <summary>The literal (true/false/null) being spelled.</summary>
    readonly string? _literal;

    JsonPrefix(Mode mode, string stack, int aux = 0, string? literal = null) { _mode = mode; _stack = stack; _aux = aux; _literal = literal; }

    /// <summary>Nothing read yet: whitespace or '{' may come.</summary>
    public static JsonPrefix Start => new(Mode.Start, "");

    /// <summary>The top-level object has closed.</summary>
    public bool Complete => _mode == Mode.Done;

    /// <summary>The state after <paramref name="text"/>, or null when the text leaves the JSON prefixes.</summary>
    public JsonPrefix? Advance(string text)
    {
        var s = this;
        foreach (var c in text)
        {
            if (s.Step(c) is not { } next) return null;
            s = next;
        }
        return s;
    }

    static bool IsSpace(char c) => c is ' ' or '\t' or '\n' or '\r';

    JsonPrefix AfterValue => _stack.Length == 0 ? new(Mode.Done, "") : new(Mode.AfterValue, _stack);

    JsonPrefix? Step(char c)
    {
        switch (_mode)
        {
            case Mode.Start:
                return IsSpace(c) ? this : c == '{' ? new JsonPrefix(Mode.KeyOrEnd, "{") : null;
            case Mode.Value:
                return IsSpace(c) ? this : BeginValue(c);
            case Mode.KeyOrEnd:
                if (IsSpace(c)) return this;
                if (c == '}') return Close();
                return c == '"' ? new JsonPrefix(Mode.String, _stack, KeyFlag) : null;
            case Mode.Key:
                return IsSpace(c) ? this : c == '"' ? new JsonPrefix(Mode.String, _stack, KeyFlag) : null;
            case Mode.Colon:
                return IsSpace(c) ? this : c == ':' ? new JsonPrefix(Mode.Value, _stack) : null;
            case Mode.String:
                return StringStep(c);
            case Mode.Number:
                return NumberStep(c);
            case Mode.Literal:
                if (c != _literal![_aux]) return null;
                return _aux + 1 == _literal.Length ? AfterValue : new JsonPrefix(Mode.Literal, _stack, _aux + 1, _literal);
            case Mode.AfterValue:
                if (IsSpace(c)) return this;
                if (c == ',') return _stack[^1] == '{' ? new JsonPrefix(Mode.Key, _stack) : new JsonPrefix(Mode.Value, _stack);
                return c == '}' && _stack[^1] == '{' || c == ']' && _stack[^1] == '[' ? Close() : null;
            default:
                return null;
        }
    }

    JsonPrefix Close()
    {
        var rest = _stack[..^1];
        return rest.Length == 0 ? new JsonPrefix(Mode.Done, "") : new JsonPrefix(Mode.AfterValue, rest);
    }

    JsonPrefix? BeginValue(char c) => c switch
    {
        '{' => new JsonPrefix(Mode.KeyOrEnd, _stack + "{"),
        '[' => new JsonPrefix(Mode.Value, _stack + "[", aux: 1),
        ']' when _aux == 1 => Close(),
        '"' => new JsonPrefix(Mode.String, _stack),
        '-' => new JsonPrefix(Mode.Number, _stack, NumMinus),
        '0' => new JsonPrefix(Mode.Number, _stack, NumZero),
        >= '1' and <= '9' => new JsonPrefix(Mode.Number, _stack, NumInt),
        't' => new JsonPrefix(Mode.Literal, _stack, 1, "true"),
        'f' => new JsonPrefix(Mode.Literal, _stack, 1, "false"),
        'n' => new JsonPrefix(Mode.Literal, _stack, 1, "null"),
        _ => null,
    };

    JsonPrefix? StringStep(char c)
    {
        int escape = _aux & 15, key = _aux & KeyFlag;
        if (escape == 0)
        {
            if (c == '"') return key != 0 ? new JsonPrefix(Mode.Colon, _stack) : AfterValue;
            if (c == '\\') return new JsonPrefix(Mode.String, _stack, key | 1);
            return c < 0x20 ? null : this;
        }
        if (escape == 1)
        {
            if (c == 'u') return new JsonPrefix(Mode.String, _stack, key | 5);
            return c is '"' or '\\' or '/' or 'b' or 'f' or 'n' or 'r' or 't' ? new JsonPrefix(Mode.String, _stack, key) : null;
        }
        if (!Uri.IsHexDigit(c)) return null;
        return new JsonPrefix(Mode.String, _stack, key | (escape == 2 ? 0 : escape - 1));
    }

    JsonPrefix? NumberStep(char c)
    {
        bool digit = c is >= '0' and <= '9';
        int next = _aux switch
        {
            NumMinus => c == '0' ? NumZero : digit ? NumInt : -1,
            NumZero => c == '.' ? NumDot : c is 'e' or 'E' ? NumE : -2,
            NumInt => digit ? NumInt : c == '.' ? NumDot : c is 'e' or 'E' ? NumE : -2,
            NumDot => digit ? NumFrac : -1,
            NumFrac => digit ? NumFrac : c is 'e' or 'E' ? NumE : -2,
            NumE => c is '+' or '-' ? NumESign : digit ? NumExp : -1,
            NumESign => digit ? NumExp : -1,
            _ => digit ? NumExp : -2,
        };
        if (next >= 0) return new JsonPrefix(Mode.Number, _stack, next);
        // -2: the number is complete and this character belongs to what follows it.
        return next == -2 ? AfterValue.Step(c) : null;
    }
}
