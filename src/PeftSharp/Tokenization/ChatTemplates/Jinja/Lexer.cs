using System.Globalization;
using System.Text;

namespace PeftSharp.Tokenization.ChatTemplates.Jinja;

internal enum TokenKind { Data, VariableBegin, VariableEnd, BlockBegin, BlockEnd, Name, String, Integer, Float, Operator, Eof }

internal readonly record struct Token(TokenKind Kind, string Value, int Line, object? Literal = null)
{
    public bool Is(TokenKind kind, string value) => Kind == kind && Value == value;
    public override string ToString() => Kind switch
    {
        TokenKind.Eof => "end of template",
        TokenKind.Data => "template text",
        TokenKind.String => $"string '{Value}'",
        _ => $"'{Value}'",
    };
}

/// <summary>
/// Splits a template into text and tag tokens the way Jinja2's lexer does with HF's settings
/// (trim_blocks, lstrip_blocks, keep_trailing_newline=False, newlines normalised to \n).
/// </summary>
internal sealed class Lexer
{
    private readonly string _src;
    private readonly List<Token> _tokens = new();
    private int _pos;
    private int _line = 1;
    private bool _lineStarting = true;

    private Lexer(string source)
    {
        var s = source.Replace("\r\n", "\n").Replace('\r', '\n');
        // Jinja drops one trailing newline of the template (keep_trailing_newline=False).
        if (s.EndsWith('\n')) s = s[..^1];
        _src = s;
    }

    public static List<Token> Tokenize(string source)
    {
        var lx = new Lexer(source);
        lx.Run();
        return lx._tokens;
    }

    private ChatTemplateException Error(string msg) => new(msg, _line);

    private void Run()
    {
        while (_pos < _src.Length)
        {
            int open = FindTagStart(_pos);
            if (open < 0) { EmitData(_src[_pos..]); _pos = _src.Length; break; }
            char kind = _src[open + 1];
            char mod = open + 2 < _src.Length ? _src[open + 2] : '\0';
            string text = _src[_pos..open];
            bool rawBegin = kind == '%' && IsRawTag(open, "raw", out _);
            if (mod == '-') text = Py.RStrip(text);
            else if (kind != '{' && mod != '+') text = LStripBlock(text);
            EmitData(text);
            _pos = open;
            if (kind == '#') LexComment();
            else if (rawBegin) LexRaw();
            else LexTag(kind == '{');
        }
        _tokens.Add(new Token(TokenKind.Eof, "", _line));
    }

    private int FindTagStart(int from)
    {
        for (int i = from; i < _src.Length - 1; i++)
            if (_src[i] == '{' && _src[i + 1] is '{' or '%' or '#') return i;
        return -1;
    }

    // lstrip_blocks: spaces/tabs between the start of a line and a block or comment tag are dropped.
    private string LStripBlock(string text)
    {
        int lpos = text.LastIndexOf('\n') + 1;
        if (lpos == 0 && !_lineStarting) return text;
        for (int i = lpos; i < text.Length; i++)
            if (text[i] is not (' ' or '\t')) return text;
        return text[..lpos];
    }

    private void EmitData(string text)
    {
        if (text.Length > 0) _tokens.Add(new Token(TokenKind.Data, text, _line));
        Advance(text);
    }

    private void Advance(string consumed)
    {
        foreach (var c in consumed) if (c == '\n') _line++;
    }

    private void Consume(int end)
    {
        string consumed = _src[_pos..end];
        Advance(consumed);
        if (consumed.Length > 0) _lineStarting = consumed[^1] == '\n';
        _pos = end;
    }

    private void LexComment()
    {
        int close = _src.IndexOf("#}", _pos + 2, StringComparison.Ordinal);
        if (close < 0) throw Error("comment '{#' is never closed with '#}'");
        int end = close + 2;
        char mod = _src[close - 1];
        if (close - 1 >= _pos + 2 && mod == '-') end = SkipWhitespace(end);
        else if (!(close - 1 >= _pos + 2 && mod == '+') && end < _src.Length && _src[end] == '\n') end++;
        Consume(end);
    }

    /// <summary>Does a `{% name %}` tag (with optional -/+ and spaces) start at <paramref name="at"/>?</summary>
    private bool IsRawTag(int at, string name, out int tagEnd)
    {
        tagEnd = -1;
        int i = at + 2;
        if (i < _src.Length && _src[i] is '-' or '+') i++;
        while (i < _src.Length && char.IsWhiteSpace(_src[i])) i++;
        if (string.CompareOrdinal(_src, i, name, 0, name.Length) != 0) return false;
        i += name.Length;
        if (i < _src.Length && (char.IsLetterOrDigit(_src[i]) || _src[i] == '_')) return false;
        while (i < _src.Length && char.IsWhiteSpace(_src[i])) i++;
        if (i < _src.Length && _src[i] is '-' or '+') i++;
        if (string.CompareOrdinal(_src, i, "%}", 0, 2) != 0) return false;
        tagEnd = i + 2;
        return true;
    }

    private void LexRaw()
    {
        IsRawTag(_pos, "raw", out int beginEnd);
        // Jinja's raw-begin never applies trim_blocks; only an explicit '-%}' strips what follows.
        if (_src[beginEnd - 3] == '-') beginEnd = SkipWhitespace(beginEnd);
        Consume(beginEnd);
        for (int i = _pos; i < _src.Length - 1; i++)
        {
            if (!(_src[i] == '{' && _src[i + 1] == '%') || !IsRawTag(i, "endraw", out int endEnd)) continue;
            string text = _src[_pos..i];
            char mod = _src[i + 2];
            if (mod == '-') text = Py.RStrip(text);
            else if (mod != '+') text = LStripBlock(text);
            if (text.Length > 0) _tokens.Add(new Token(TokenKind.Data, text, _line));
            Advance(_src[_pos..i]);
            _pos = i;
            char endMod = _src[endEnd - 3];
            if (endMod == '-') endEnd = SkipWhitespace(endEnd);
            else if (endMod != '+' && endEnd < _src.Length && _src[endEnd] == '\n') endEnd++;
            Consume(endEnd);
            return;
        }
        throw Error("'{% raw %}' is never closed with '{% endraw %}'");
    }

    private int SkipWhitespace(int i)
    {
        while (i < _src.Length && char.IsWhiteSpace(_src[i])) i++;
        return i;
    }

    private void LexTag(bool variable)
    {
        int beginLine = _line;
        _tokens.Add(new Token(variable ? TokenKind.VariableBegin : TokenKind.BlockBegin, variable ? "{{" : "{%", _line));
        int i = _pos + 2;
        if (i < _src.Length && (_src[i] == '-' || (!variable && _src[i] == '+'))) i++;
        Consume(i);
        int depth = 0;
        while (true)
        {
            i = _pos;
            while (i < _src.Length && char.IsWhiteSpace(_src[i])) i++;
            Consume(i);
            if (_pos >= _src.Length)
                throw new ChatTemplateException($"'{(variable ? "{{" : "{%")}' opened here is never closed", beginLine);
            if (depth == 0 && TryTagEnd(variable)) return;
            LexExpressionToken(ref depth);
        }
    }

    private bool TryTagEnd(bool variable)
    {
        string close = variable ? "}}" : "%}";
        char mod = _src[_pos];
        int at = mod == '-' || (!variable && mod == '+') ? _pos + 1 : _pos;
        if (string.CompareOrdinal(_src, at, close, 0, 2) != 0) return false;
        int end = at + 2;
        if (mod == '-') end = SkipWhitespace(end);
        else if (!variable && mod != '+' && end < _src.Length && _src[end] == '\n') end++;
        _tokens.Add(new Token(variable ? TokenKind.VariableEnd : TokenKind.BlockEnd, close, _line));
        Consume(end);
        return true;
    }

    private static readonly string[] Operators =
        { "//", "**", "==", "!=", "<=", ">=", "+", "-", "/", "*", "%", "~", "[", "]", "(", ")", "{", "}", "<", ">", "=", ".", ":", "|", ",", ";" };

    private void LexExpressionToken(ref int depth)
    {
        char c = _src[_pos];
        int start = _pos;
        if (char.IsLetter(c) || c == '_')
        {
            int i = _pos + 1;
            while (i < _src.Length && (char.IsLetterOrDigit(_src[i]) || _src[i] == '_')) i++;
            _tokens.Add(new Token(TokenKind.Name, _src[start..i], _line));
            Consume(i);
            return;
        }
        if (c is '\'' or '"') { LexString(c); return; }
        if (char.IsAsciiDigit(c)) { LexNumber(); return; }
        foreach (var op in Operators)
        {
            if (string.CompareOrdinal(_src, _pos, op, 0, op.Length) != 0) continue;
            if (op is "(" or "[" or "{") depth++;
            else if (op is ")" or "]" or "}")
            {
                if (depth == 0) throw Error($"unexpected '{op}'");
                depth--;
            }
            _tokens.Add(new Token(TokenKind.Operator, op, _line));
            Consume(_pos + op.Length);
            return;
        }
        throw Error($"unexpected character '{c}' inside a tag");
    }

    private void LexNumber()
    {
        int i = _pos;
        bool isFloat = false;
        if (_src[i] == '0' && i + 1 < _src.Length && _src[i + 1] is 'x' or 'X' or 'o' or 'O' or 'b' or 'B')
        {
            int radix = char.ToLowerInvariant(_src[i + 1]) switch { 'x' => 16, 'o' => 8, _ => 2 };
            i += 2;
            int ds = i;
            while (i < _src.Length && (Uri.IsHexDigit(_src[i]) || _src[i] == '_')) i++;
            var digits = _src[ds..i].Replace("_", "");
            long v = 0;
            foreach (var d in digits)
            {
                int dv = Convert.ToInt32(d.ToString(), 16);
                if (dv >= radix) throw Error($"invalid digit '{d}' in number literal");
                v = checked(v * radix + dv);
            }
            _tokens.Add(new Token(TokenKind.Integer, _src[_pos..i], _line, v));
            Consume(i);
            return;
        }
        while (i < _src.Length && (char.IsAsciiDigit(_src[i]) || _src[i] == '_')) i++;
        if (i + 1 < _src.Length && _src[i] == '.' && char.IsAsciiDigit(_src[i + 1]))
        {
            isFloat = true;
            i++;
            while (i < _src.Length && (char.IsAsciiDigit(_src[i]) || _src[i] == '_')) i++;
        }
        if (i < _src.Length && _src[i] is 'e' or 'E')
        {
            int j = i + 1;
            if (j < _src.Length && _src[j] is '+' or '-') j++;
            if (j < _src.Length && char.IsAsciiDigit(_src[j]))
            {
                isFloat = true;
                i = j;
                while (i < _src.Length && char.IsAsciiDigit(_src[i])) i++;
            }
        }
        var text = _src[_pos..i].Replace("_", "");
        object lit = isFloat
            ? (object)double.Parse(text, NumberStyles.Float, CultureInfo.InvariantCulture)
            : long.TryParse(text, NumberStyles.None, CultureInfo.InvariantCulture, out var l) ? (object)l
            : throw Error($"integer literal {text} is larger than 64 bits (not supported)");
        _tokens.Add(new Token(isFloat ? TokenKind.Float : TokenKind.Integer, text, _line, lit));
        Consume(i);
    }

    // Python string-literal escapes, as Jinja decodes them ("unicode-escape").
    private void LexString(char quote)
    {
        var sb = new StringBuilder();
        int i = _pos + 1;
        while (true)
        {
            if (i >= _src.Length) throw Error("string literal is never closed");
            char c = _src[i];
            if (c == quote) { i++; break; }
            if (c != '\\' || i + 1 >= _src.Length) { sb.Append(c); i++; continue; }
            char e = _src[i + 1];
            i += 2;
            switch (e)
            {
                case 'n': sb.Append('\n'); break;
                case 't': sb.Append('\t'); break;
                case 'r': sb.Append('\r'); break;
                case '\\': sb.Append('\\'); break;
                case '\'': sb.Append('\''); break;
                case '"': sb.Append('"'); break;
                case 'a': sb.Append('\a'); break;
                case 'b': sb.Append('\b'); break;
                case 'f': sb.Append('\f'); break;
                case 'v': sb.Append('\v'); break;
                case '\n': break;
                case 'x': sb.Append(HexEscape(ref i, 2)); break;
                case 'u': sb.Append(HexEscape(ref i, 4)); break;
                case 'U': sb.Append(HexEscape(ref i, 8)); break;
                case >= '0' and <= '7':
                {
                    int v = e - '0', n = 1;
                    while (n < 3 && i < _src.Length && _src[i] is >= '0' and <= '7') { v = v * 8 + (_src[i] - '0'); i++; n++; }
                    sb.Append((char)v);
                    break;
                }
                case 'N': throw Error("\\N{...} escapes in string literals are not supported");
                default: sb.Append('\\').Append(e); break;
            }
        }
        _tokens.Add(new Token(TokenKind.String, sb.ToString(), _line));
        Consume(i);
    }

    private string HexEscape(ref int i, int n)
    {
        if (i + n > _src.Length || !int.TryParse(_src.AsSpan(i, n), NumberStyles.AllowHexSpecifier, CultureInfo.InvariantCulture, out int cp))
            throw Error($"truncated \\{(n == 2 ? 'x' : n == 4 ? 'u' : 'U')} escape in a string literal");
        i += n;
        if (cp > 0x10FFFF) throw Error($"escape \\U{cp:x8} is beyond Unicode's range");
        // Python strings may hold lone surrogates; keep them as the one UTF-16 unit.
        return cp is >= 0xD800 and <= 0xDFFF ? ((char)cp).ToString() : char.ConvertFromUtf32(cp);
    }
}
