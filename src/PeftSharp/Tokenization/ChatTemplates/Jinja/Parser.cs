using PeftSharp.Runtime;
namespace PeftSharp.Tokenization.ChatTemplates.Jinja;

/// <summary>Recursive-descent parser with Jinja2's grammar and operator precedence (filters bind tighter than arithmetic).</summary>
internal sealed class Parser
{
    private static readonly HashSet<string> UnsupportedTags = new()
    {
        "extends", "block", "include", "import", "from", "autoescape", "do", "trans", "pluralize", "endtrans",
    };

    private readonly List<Token> _t;
    private int _i;
    // Names loaded inside each open macro body: decides whether it takes caller/varargs/kwargs.
    private readonly Stack<HashSet<string>> _macroNames = new();

    private Parser(List<Token> tokens) => _t = tokens;

    public static List<Node> Parse(string source)
    {
        var p = new Parser(Lexer.Tokenize(source));
        var (body, _) = p.ParseBody();
        return body;
    }

    private Token Cur => _t[_i];
    private Token Peek(int n = 1) => _t[Math.Min(_i + n, _t.Count - 1)];
    private Token Next() => _t[_i++];
    private static ChatTemplateException Error(string msg, Token at) => new(msg, at.Line);

    private bool IsOp(string op) => Cur.Is(TokenKind.Operator, op);
    private bool IsName(string name) => Cur.Is(TokenKind.Name, name);

    private bool SkipOp(string op)
    {
        if (!IsOp(op)) return false;
        _i++;
        return true;
    }

    private bool SkipName(string name)
    {
        if (!IsName(name)) return false;
        _i++;
        return true;
    }

    private void ExpectOp(string op)
    {
        if (!SkipOp(op)) throw Error($"expected '{op}', found {Cur}", Cur);
    }

    private string ExpectName()
    {
        if (Cur.Kind != TokenKind.Name) throw Error($"expected a name, found {Cur}", Cur);
        return Next().Value;
    }

    private void ExpectBlockEnd(string what)
    {
        if (Cur.Kind != TokenKind.BlockEnd) throw Error($"expected '%}}' to end '{what}', found {Cur}", Cur);
        _i++;
    }

    // ---------------------------------------------------------------- template structure

    private (List<Node> Body, string? EndTag) ParseBody(params string[] endTags)
    {
        var body = new List<Node>();
        while (true)
        {
            var tok = Cur;
            switch (tok.Kind)
            {
                case TokenKind.Data:
                    body.Add(new TextNode(tok.Line, tok.Value));
                    _i++;
                    break;
                case TokenKind.VariableBegin:
                    _i++;
                    var e = ParseTuple(withCondExpr: true);
                    if (Cur.Kind != TokenKind.VariableEnd) throw Error($"expected '}}}}', found {Cur}", Cur);
                    _i++;
                    body.Add(new OutputNode(tok.Line, e));
                    break;
                case TokenKind.BlockBegin:
                    _i++;
                    if (Cur.Kind == TokenKind.Name && endTags.Contains(Cur.Value)) return (body, Next().Value);
                    body.Add(ParseStatement());
                    break;
                case TokenKind.Eof:
                    if (endTags.Length > 0)
                        throw Error($"unexpected end of template: expected '{{% {string.Join("' or '{% ", endTags)} %}}'", tok);
                    return (body, null);
                default:
                    throw Error($"unexpected {tok}", tok);
            }
        }
    }

    private Node ParseStatement()
    {
        Enter(Cur);
        try { return ParseStatementCore(); }
        finally { _depth--; }
    }

    private Node ParseStatementCore()
    {
        var tok = Cur;
        if (tok.Kind != TokenKind.Name) throw Error($"expected a tag name after '{{%', found {tok}", tok);
        _i++;
        switch (tok.Value)
        {
            case "if": return ParseIf(tok.Line);
            case "for": return ParseFor(tok.Line);
            case "set": return ParseSet(tok.Line);
            case "macro": return ParseMacro(tok.Line);
            case "call": return ParseCallBlock(tok.Line);
            case "filter":
            {
                var filters = ParseFilterChain(null);
                ExpectBlockEnd("filter");
                var (body, _) = ParseBody("endfilter");
                ExpectBlockEnd("endfilter");
                return new FilterBlockNode(tok.Line, filters, body);
            }
            case "with": return ParseWith(tok.Line);
            case "break": ExpectBlockEnd("break"); return new BreakNode(tok.Line);
            case "continue": ExpectBlockEnd("continue"); return new ContinueNode(tok.Line);
            case "generation":
            {
                ExpectBlockEnd("generation");
                var (body, _) = ParseBody("endgeneration");
                ExpectBlockEnd("endgeneration");
                return new GenerationNode(tok.Line, body);
            }
        }
        if (UnsupportedTags.Contains(tok.Value))
            throw Error($"the '{{% {tok.Value} %}}' tag is not supported in chat templates", tok);
        throw Error($"unknown tag '{{% {tok.Value} %}}'", tok);
    }

    private Node ParseIf(int line)
    {
        var branches = new List<(Expr, List<Node>)>();
        List<Node>? elseBody = null;
        string tag = "if";
        while (true)
        {
            var test = ParseTuple(withCondExpr: false);
            ExpectBlockEnd(tag);
            var (body, end) = ParseBody("elif", "else", "endif");
            branches.Add((test, body));
            if (end == "elif") { tag = "elif"; continue; }
            if (end == "else")
            {
                ExpectBlockEnd("else");
                (elseBody, _) = ParseBody("endif");
            }
            ExpectBlockEnd("endif");
            return new IfNode(line, branches, elseBody);
        }
    }

    private Node ParseFor(int line)
    {
        var target = ParseAssignTarget(allowAttr: false, endName: "in");
        if (!SkipName("in")) throw Error($"expected 'in' in '{{% for %}}', found {Cur}", Cur);
        var iter = ParseTuple(withCondExpr: false, endName: "recursive");
        Expr? filter = null;
        if (SkipName("if")) filter = ParseExpression();
        if (IsName("recursive")) throw Error("recursive for loops ('{% for ... recursive %}') are not supported", Cur);
        ExpectBlockEnd("for");
        var (body, end) = ParseBody("endfor", "else");
        List<Node>? elseBody = null;
        if (end == "else")
        {
            ExpectBlockEnd("else");
            (elseBody, _) = ParseBody("endfor");
        }
        ExpectBlockEnd("endfor");
        return new ForNode(line, target, iter, filter, body, elseBody);
    }

    private Node ParseSet(int line)
    {
        var target = ParseAssignTarget(allowAttr: true);
        if (SkipOp("="))
        {
            var value = ParseTuple(withCondExpr: true);
            ExpectBlockEnd("set");
            return new SetNode(line, target, value);
        }
        var filters = SkipOp("|") ? ParseFilterChain(null) : new List<FilterExpr>();
        ExpectBlockEnd("set");
        var (body, _) = ParseBody("endset");
        ExpectBlockEnd("endset");
        return new SetBlockNode(line, target, filters, body);
    }

    private Node ParseWith(int line)
    {
        var assigns = new List<(Expr, Expr)>();
        while (Cur.Kind != TokenKind.BlockEnd)
        {
            if (assigns.Count > 0) ExpectOp(",");
            var target = ParseAssignTarget(allowAttr: false);
            ExpectOp("=");
            assigns.Add((target, ParseExpression()));
        }
        ExpectBlockEnd("with");
        var (body, _) = ParseBody("endwith");
        ExpectBlockEnd("endwith");
        return new WithNode(line, assigns, body);
    }

    private MacroNode ParseMacroRest(int line, string name, bool requireParens)
    {
        var ps = new List<(string, Expr?)>();
        if (requireParens || IsOp("("))
        {
            ExpectOp("(");
            while (!SkipOp(")"))
            {
                if (ps.Count > 0) ExpectOp(",");
                if (SkipOp(")")) break;
                var pname = ExpectName();
                Expr? def = SkipOp("=") ? ParseExpression() : null;
                if (def is null && ps.Count > 0 && ps[^1].Item2 is not null)
                    throw Error($"macro '{name}': parameter '{pname}' without a default follows one with a default", Cur);
                ps.Add((pname, def));
            }
        }
        return new MacroNode(line, name, ps, new List<Node>(), false, false, false);
    }

    private MacroNode ParseMacroBody(MacroNode header, string endTag)
    {
        _macroNames.Push(new HashSet<string>());
        var (body, _) = ParseBody(endTag);
        var names = _macroNames.Pop();
        ExpectBlockEnd(endTag);
        return header with
        {
            Body = body, UsesCaller = names.Contains("caller"),
            UsesVarargs = names.Contains("varargs"), UsesKwargs = names.Contains("kwargs"),
        };
    }

    private Node ParseMacro(int line)
    {
        var name = ExpectName();
        var header = ParseMacroRest(line, name, requireParens: true);
        ExpectBlockEnd("macro");
        return ParseMacroBody(header, "endmacro");
    }

    private Node ParseCallBlock(int line)
    {
        var header = IsOp("(") ? ParseMacroRest(line, "caller", requireParens: true)
            : new MacroNode(line, "caller", new(), new(), false, false, false);
        var call = ParseExpression();
        if (call is not CallExpr ce) throw Error("'{% call %}' must be followed by a macro call", Cur);
        ExpectBlockEnd("call");
        return new CallBlockNode(line, ce, ParseMacroBody(header, "endcall"));
    }

    /// <summary>A name, `ns.attr` (set only), or a tuple of names for unpacking.</summary>
    private Expr ParseAssignTarget(bool allowAttr, string? endName = null)
    {
        var line = Cur.Line;
        bool paren = SkipOp("(");
        var items = new List<Expr>();
        while (true)
        {
            var tok = Cur;
            var name = ExpectName();
            if (allowAttr && !paren && items.Count == 0 && SkipOp("."))
                return new GetAttrExpr(tok.Line, new NameExpr(tok.Line, name), ExpectName());
            items.Add(new NameExpr(tok.Line, name));
            if (!SkipOp(",")) break;
            if (paren && IsOp(")")) break;
            if (endName is not null && IsName(endName)) break;
        }
        if (paren) ExpectOp(")");
        return items.Count == 1 && !paren ? items[0] : new TupleExpr(line, items);
    }

    // ---------------------------------------------------------------- expressions

    private Expr ParseTuple(bool withCondExpr, string? endName = null, bool explicitParens = false)
    {
        var line = Cur.Line;
        var items = new List<Expr>();
        bool isTuple = false;
        while (true)
        {
            if (items.Count > 0) ExpectOp(",");
            if (IsTupleEnd(endName)) break;
            items.Add(withCondExpr ? ParseExpression() : ParseOr());
            if (IsOp(",")) isTuple = true;
            else break;
        }
        if (!isTuple)
        {
            if (items.Count == 1) return items[0];
            if (!explicitParens) throw Error($"expected an expression, found {Cur}", Cur);
        }
        return new TupleExpr(line, items);
    }

    private bool IsTupleEnd(string? endName) =>
        Cur.Kind is TokenKind.VariableEnd or TokenKind.BlockEnd or TokenKind.Eof || IsOp(")")
        || (endName is not null && IsName(endName));

    private Expr ParseExpression()
    {
        var line = Cur.Line;
        var expr = ParseOr();
        while (SkipName("if"))
        {
            var test = ParseOr();
            Expr? otherwise = SkipName("else") ? ParseExpression() : null;
            expr = new CondExpr(line, test, expr, otherwise);
        }
        return expr;
    }

    private Expr ParseOr()
    {
        var left = ParseAnd();
        while (IsName("or")) { var l = Next().Line; left = new BinaryExpr(l, "or", left, ParseAnd()); }
        return left;
    }

    private Expr ParseAnd()
    {
        var left = ParseNot();
        while (IsName("and")) { var l = Next().Line; left = new BinaryExpr(l, "and", left, ParseNot()); }
        return left;
    }

    private Expr ParseNot()
    {
        if (IsName("not")) { var l = Next().Line; return new UnaryExpr(l, "not", ParseNot()); }
        return ParseCompare();
    }

    private Expr ParseCompare()
    {
        var line = Cur.Line;
        var first = ParseMath1();
        var ops = new List<(string, Expr)>();
        while (true)
        {
            if (Cur.Kind == TokenKind.Operator && Cur.Value is "==" or "!=" or "<" or "<=" or ">" or ">=")
                ops.Add((Next().Value, ParseMath1()));
            else if (SkipName("in")) ops.Add(("in", ParseMath1()));
            else if (IsName("not") && Peek().Is(TokenKind.Name, "in")) { _i += 2; ops.Add(("notin", ParseMath1())); }
            else break;
        }
        return ops.Count == 0 ? first : new CompareExpr(line, first, ops);
    }

    private Expr ParseMath1()
    {
        var left = ParseConcat();
        while (Cur.Kind == TokenKind.Operator && Cur.Value is "+" or "-")
        {
            var op = Next();
            left = new BinaryExpr(op.Line, op.Value, left, ParseConcat());
        }
        return left;
    }

    private Expr ParseConcat()
    {
        var line = Cur.Line;
        var parts = new List<Expr> { ParseMath2() };
        while (SkipOp("~")) parts.Add(ParseMath2());
        return parts.Count == 1 ? parts[0] : new ConcatExpr(line, parts);
    }

    private Expr ParseMath2()
    {
        var left = ParsePow();
        while (Cur.Kind == TokenKind.Operator && Cur.Value is "*" or "/" or "//" or "%")
        {
            var op = Next();
            left = new BinaryExpr(op.Line, op.Value, left, ParsePow());
        }
        return left;
    }

    private Expr ParsePow()
    {
        var left = ParseUnary();
        while (IsOp("**")) { var l = Next().Line; left = new BinaryExpr(l, "**", left, ParseUnary()); }
        return left;
    }

    // Every nested expression and block passes through here: bounded, so 20,000 '(' cannot overflow the stack.
    private int _depth;

    private void Enter(Token at)
    {
        if (++_depth > ResourceLimits.JinjaMaxDepth.Value)
            throw new PeftLimitException($"chat template line {at.Line}: nesting", ResourceLimits.JinjaMaxDepth);
    }

    private Expr ParseUnary(bool withFilter = true)
    {
        Enter(Cur);
        try { return ParseUnaryCore(withFilter); }
        finally { _depth--; }
    }

    private Expr ParseUnaryCore(bool withFilter)
    {
        var line = Cur.Line;
        Expr node;
        if (SkipOp("-")) node = new UnaryExpr(line, "-", ParseUnary(false));
        else if (SkipOp("+")) node = new UnaryExpr(line, "+", ParseUnary(false));
        else node = ParsePrimary();
        node = ParsePostfix(node);
        return withFilter ? ParseFilterExpr(node) : node;
    }

    private Expr ParsePrimary()
    {
        var tok = Next();
        switch (tok.Kind)
        {
            case TokenKind.Name:
                switch (tok.Value)
                {
                    case "true" or "True": return new ConstExpr(tok.Line, true);
                    case "false" or "False": return new ConstExpr(tok.Line, false);
                    case "none" or "None": return new ConstExpr(tok.Line, null);
                }
                foreach (var set in _macroNames) set.Add(tok.Value);
                return new NameExpr(tok.Line, tok.Value);
            case TokenKind.String:
            {
                var s = tok.Value;
                while (Cur.Kind == TokenKind.String) s += Next().Value;
                return new ConstExpr(tok.Line, s);
            }
            case TokenKind.Integer:
            case TokenKind.Float:
                return new ConstExpr(tok.Line, tok.Literal);
            case TokenKind.Operator when tok.Value == "(":
            {
                var e = ParseTuple(withCondExpr: true, explicitParens: true);
                ExpectOp(")");
                return e;
            }
            case TokenKind.Operator when tok.Value == "[":
            {
                var items = new List<Expr>();
                while (!SkipOp("]"))
                {
                    if (items.Count > 0) ExpectOp(",");
                    if (SkipOp("]")) break;
                    items.Add(ParseExpression());
                }
                return new ListExpr(tok.Line, items);
            }
            case TokenKind.Operator when tok.Value == "{":
            {
                var pairs = new List<(Expr, Expr)>();
                while (!SkipOp("}"))
                {
                    if (pairs.Count > 0) ExpectOp(",");
                    if (SkipOp("}")) break;
                    var k = ParseExpression();
                    ExpectOp(":");
                    pairs.Add((k, ParseExpression()));
                }
                return new DictExpr(tok.Line, pairs);
            }
        }
        throw Error($"unexpected {tok} in an expression", tok);
    }

    private Expr ParsePostfix(Expr node)
    {
        while (true)
        {
            var tok = Cur;
            if (SkipOp("."))
            {
                var attr = Next();
                node = attr.Kind switch
                {
                    TokenKind.Name => new GetAttrExpr(tok.Line, node, attr.Value),
                    TokenKind.Integer => new GetItemExpr(tok.Line, node, new ConstExpr(attr.Line, attr.Literal)),
                    _ => throw Error($"expected an attribute name after '.', found {attr}", attr),
                };
            }
            else if (SkipOp("[")) node = ParseSubscript(node, tok.Line);
            else if (IsOp("(")) node = ParseCall(node);
            else return node;
        }
    }

    private Expr ParseSubscript(Expr obj, int line)
    {
        Expr? start = null, stop = null, step = null;
        bool slice = false;
        if (!IsOp(":")) start = ParseExpression();
        if (SkipOp(":"))
        {
            slice = true;
            if (!IsOp("]") && !IsOp(":")) stop = ParseExpression();
            if (SkipOp(":") && !IsOp("]")) step = ParseExpression();
        }
        if (IsOp(",")) throw Error("tuple subscripts (a[x, y]) are not supported", Cur);
        ExpectOp("]");
        return slice ? new SliceExpr(line, obj, start, stop, step) : new GetItemExpr(line, obj, start!);
    }

    private (List<Expr>, List<(string, Expr)>) ParseCallArgs()
    {
        ExpectOp("(");
        var args = new List<Expr>();
        var kwargs = new List<(string, Expr)>();
        while (!SkipOp(")"))
        {
            if (args.Count + kwargs.Count > 0) ExpectOp(",");
            if (SkipOp(")")) break;
            if (IsOp("*") || IsOp("**")) throw Error("'*args' / '**kwargs' in calls are not supported", Cur);
            if (Cur.Kind == TokenKind.Name && Peek().Is(TokenKind.Operator, "="))
            {
                var name = Next().Value;
                _i++;
                kwargs.Add((name, ParseExpression()));
            }
            else
            {
                if (kwargs.Count > 0) throw Error("positional argument follows keyword argument", Cur);
                args.Add(ParseExpression());
            }
        }
        return (args, kwargs);
    }

    private Expr ParseCall(Expr func)
    {
        var line = Cur.Line;
        var (args, kwargs) = ParseCallArgs();
        return new CallExpr(line, func, args, kwargs);
    }

    private Expr ParseFilterExpr(Expr node)
    {
        while (true)
        {
            if (IsOp("|")) node = ParseFilterChain(node)[^1];
            else if (IsName("is")) node = ParseTest(node);
            else if (IsOp("(")) node = ParseCall(node);
            else return node;
        }
    }

    /// <summary>One or more `| name(args)` filters; each wraps the previous one.</summary>
    private List<FilterExpr> ParseFilterChain(Expr? value)
    {
        var chain = new List<FilterExpr>();
        bool first = value is null;
        while (first || IsOp("|"))
        {
            if (!first) _i++;
            first = false;
            var tok = Cur;
            var name = ExpectName();
            while (SkipOp(".")) name += "." + ExpectName();
            var (args, kwargs) = IsOp("(") ? ParseCallArgs() : (new List<Expr>(), new List<(string, Expr)>());
            var f = new FilterExpr(tok.Line, value, name, args, kwargs);
            chain.Add(f);
            value = f;
        }
        return chain;
    }

    private Expr ParseTest(Expr node)
    {
        var line = Next().Line;
        bool negated = SkipName("not");
        var name = ExpectName();
        while (SkipOp(".")) name += "." + ExpectName();
        var args = new List<Expr>();
        if (IsOp("("))
        {
            var (a, kw) = ParseCallArgs();
            if (kw.Count > 0) throw Error($"keyword arguments to the test '{name}' are not supported", Cur);
            args = a;
        }
        else if ((Cur.Kind is TokenKind.Name or TokenKind.String or TokenKind.Integer or TokenKind.Float
                  || IsOp("[") || IsOp("{")) && !(IsName("else") || IsName("or") || IsName("and")))
        {
            if (IsName("is")) throw Error("tests cannot be chained with 'is'", Cur);
            args.Add(ParsePostfix(ParsePrimary()));
        }
        return new TestExpr(line, node, name, args, negated);
    }
}
