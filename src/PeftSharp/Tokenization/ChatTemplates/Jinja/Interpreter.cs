using System.Text;
using PeftSharp.Runtime;

namespace PeftSharp.Tokenization.ChatTemplates.Jinja;

/// <summary>A variable scope. For-loop bodies, macros and `with` get a child scope; `if` does not (as in Jinja2).</summary>
internal sealed class Scope(Scope? parent)
{
    private Scope? Parent { get; } = parent;
    public Dictionary<string, object?> Vars { get; } = new();

    public bool TryGet(string name, out object? value)
    {
        for (var s = this; s is not null; s = s.Parent)
            if (s.Vars.TryGetValue(name, out value)) return true;
        value = null;
        return false;
    }
}

/// <summary>A `{% macro %}` bound to the scope it was defined in.</summary>
internal sealed class MacroValue(MacroNode node, Scope definedIn) : ICallable
{
    public string Name => node.Name;

    public object? Call(Interpreter it, List<object?> args, Dictionary<string, object?> kwargs)
    {
        using var depth = it.EnterCall(Name);
        var scope = new Scope(definedIn);
        var ps = node.Params;
        for (int i = 0; i < ps.Count; i++)
        {
            var (pname, def) = ps[i];
            if (i < args.Count)
            {
                if (kwargs.ContainsKey(pname)) throw new JinjaError($"macro '{Name}' got multiple values for argument '{pname}'");
                scope.Vars[pname] = args[i];
            }
            else if (kwargs.Remove(pname, out var kv)) scope.Vars[pname] = kv;
            else scope.Vars[pname] = def is null ? new Undefined($"parameter '{pname}' was not provided") : it.Eval(def, scope);
        }
        var extra = new PyTuple(args.Skip(ps.Count));
        if (extra.Count > 0 && !node.UsesVarargs) throw new JinjaError($"macro '{Name}' takes not more than {ps.Count} argument(s)");
        scope.Vars["varargs"] = extra;
        if (kwargs.Remove("caller", out var caller))
        {
            if (!node.UsesCaller) throw new JinjaError($"macro '{Name}' was invoked with a caller but does not use caller()");
            scope.Vars["caller"] = caller;
        }
        if (kwargs.Count > 0 && !node.UsesKwargs)
            throw new JinjaError($"macro '{Name}' takes no keyword argument '{kwargs.Keys.First()}'");
        var kw = new PyDict();
        foreach (var (k, v) in kwargs) kw[k] = v;
        scope.Vars["kwargs"] = kw;
        var sb = new StringBuilder();
        if (it.ExecBlock(node.Body, scope, sb) != Interpreter.Flow.Normal)
            throw new JinjaError("'break' or 'continue' outside of a loop");
        return sb.ToString();
    }
}

/// <summary>Walks the AST. One instance per render; the parsed template is shared and immutable.</summary>
internal sealed class Interpreter(Func<DateTime> clock)
{
    internal enum Flow { Normal, Break, Continue }

    private int _callDepth;

    // One render's budget (ResourceLimits): loop iterations, output size, wall-clock time.
    private readonly long _maxIterations = ResourceLimits.JinjaMaxIterations.Value;
    private readonly long _maxOutput = ResourceLimits.JinjaMaxOutput.Value;
    private readonly long _deadline = Environment.TickCount64 + ResourceLimits.JinjaTimeoutMs.Value;
    private long _iterations;

    public DateTime Now() => clock();

    public IDisposable EnterCall(string name)
    {
        if (_callDepth >= ResourceLimits.JinjaMaxDepth.Value)
            throw new PeftLimitException($"chat template: macro '{name}' recursion", ResourceLimits.JinjaMaxDepth);
        Tick();
        _callDepth++;
        return new CallFrame(this);
    }

    /// <summary>One unit of work (a loop iteration, a macro call): counts against the iteration budget and the clock.</summary>
    public void Tick()
    {
        if (++_iterations > _maxIterations) throw new PeftLimitException("chat template: loop iterations", ResourceLimits.JinjaMaxIterations);
        CheckClock();
    }

    private void CheckClock()
    {
        if (Environment.TickCount64 > _deadline) throw new PeftLimitException("chat template: rendering time", ResourceLimits.JinjaTimeoutMs);
    }

    private void CheckSize(object? value)
    {
        long size = value switch { string s => s.Length, StringBuilder b => b.Length, List<object?> l => l.Count, _ => 0 };
        if (size > _maxOutput) throw new PeftLimitException("chat template: a rendered string or list", ResourceLimits.JinjaMaxOutput);
    }

    private sealed class CallFrame(Interpreter it) : IDisposable
    {
        public void Dispose() => it._callDepth--;
    }

    public string Render(List<Node> body, Dictionary<string, object?> context)
    {
        var globals = new Scope(null);
        foreach (var (k, v) in Globals.All) globals.Vars[k] = v;
        var root = new Scope(globals);
        foreach (var (k, v) in context) root.Vars[k] = v;
        var sb = new StringBuilder();
        if (ExecBlock(body, root, sb) != Flow.Normal)
            throw new ChatTemplateException("'break' or 'continue' outside of a loop");
        return sb.ToString();
    }

    public Flow ExecBlock(List<Node> nodes, Scope scope, StringBuilder sb)
    {
        foreach (var n in nodes)
        {
            var flow = Exec(n, scope, sb);
            if (flow != Flow.Normal) return flow;
        }
        return Flow.Normal;
    }

    private Flow Exec(Node node, Scope scope, StringBuilder sb)
    {
        CheckClock();
        try
        {
            var flow = ExecNode(node, scope, sb);
            CheckSize(sb);
            return flow;
        }
        catch (InsufficientExecutionStackException)
        {
            throw new PeftLimitException($"chat template line {node.Line}: nesting", ResourceLimits.JinjaMaxDepth);
        }
    }

    private Flow ExecNode(Node node, Scope scope, StringBuilder sb)
    {
        System.Runtime.CompilerServices.RuntimeHelpers.EnsureSufficientExecutionStack();
        try
        {
            switch (node)
            {
                case TextNode t: sb.Append(t.Text); return Flow.Normal;
                case OutputNode o: sb.Append(Py.Str(Eval(o.Value, scope))); return Flow.Normal;
                case IfNode n:
                    foreach (var (test, body) in n.Branches)
                        if (Py.Truthy(Eval(test, scope))) return ExecBlock(body, scope, sb);
                    return n.Else is null ? Flow.Normal : ExecBlock(n.Else, scope, sb);
                case ForNode f: return ExecFor(f, scope, sb);
                case SetNode s: Assign(s.Target, Eval(s.Value, scope), scope); return Flow.Normal;
                case SetBlockNode sbn:
                {
                    var inner = new StringBuilder();
                    if (ExecBlock(sbn.Body, scope, inner) != Flow.Normal) throw new JinjaError("'break' or 'continue' inside a set block");
                    object? value = inner.ToString();
                    foreach (var f in sbn.Filters) value = ApplyFilter(f, value, scope);
                    Assign(sbn.Target, value, scope);
                    return Flow.Normal;
                }
                case MacroNode m: scope.Vars[m.Name] = new MacroValue(m, scope); return Flow.Normal;
                case CallBlockNode cb:
                {
                    var callee = Eval(cb.Call.Func, scope);
                    var (args, kwargs) = EvalArgs(cb.Call.Args, cb.Call.Kwargs, scope);
                    kwargs["caller"] = new MacroValue(cb.Caller, scope);
                    sb.Append(Py.Str(Invoke(callee, args, kwargs)));
                    return Flow.Normal;
                }
                case FilterBlockNode fb:
                {
                    var inner = new StringBuilder();
                    var flow = ExecBlock(fb.Body, scope, inner);
                    object? value = inner.ToString();
                    foreach (var f in fb.Filters) value = ApplyFilter(f, value, scope);
                    sb.Append(Py.Str(value));
                    return flow;
                }
                case WithNode w:
                {
                    var inner = new Scope(scope);
                    foreach (var (target, value) in w.Assignments) Assign(target, Eval(value, inner), inner);
                    return ExecBlock(w.Body, inner, sb);
                }
                case GenerationNode g: return ExecBlock(g.Body, scope, sb);
                case BreakNode: return Flow.Break;
                case ContinueNode: return Flow.Continue;
                case Expr e: sb.Append(Py.Str(Eval(e, scope))); return Flow.Normal;
            }
            throw new JinjaError($"unsupported node {node.GetType().Name}");
        }
        catch (JinjaError e) { throw new ChatTemplateException(e.Message, node.Line); }
        catch (OverflowException) { throw new ChatTemplateException("integer overflow (values beyond 64 bits are not supported)", node.Line); }
    }

    private Flow ExecFor(ForNode f, Scope scope, StringBuilder sb)
    {
        var items = Py.ToList(Eval(f.Iter, scope));
        if (f.Filter is not null)
            items = items.Where(item =>
            {
                Tick();
                var s = new Scope(scope);
                Assign(f.Target, item, s);
                return Py.Truthy(Eval(f.Filter, s));
            }).ToList();
        if (items.Count == 0) return f.Else is null ? Flow.Normal : ExecBlock(f.Else, scope, sb);
        var loop = new LoopInfo(items);
        for (int i = 0; i < items.Count; i++)
        {
            Tick();
            loop.Index0 = i;
            var s = new Scope(scope);
            s.Vars["loop"] = loop;
            Assign(f.Target, items[i], s);
            if (ExecBlock(f.Body, s, sb) == Flow.Break) break;
        }
        return Flow.Normal;
    }

    private void Assign(Expr target, object? value, Scope scope)
    {
        switch (target)
        {
            case NameExpr n: scope.Vars[n.Name] = value; return;
            case TupleExpr t:
            {
                var items = Py.ToList(value);
                if (items.Count != t.Items.Count)
                    throw new JinjaError($"cannot unpack {items.Count} values into {t.Items.Count} names");
                for (int i = 0; i < items.Count; i++) Assign(t.Items[i], items[i], scope);
                return;
            }
            case GetAttrExpr { Obj: NameExpr ns } ga:
            {
                if (!scope.TryGet(ns.Name, out var obj) || obj is not Namespace nsv)
                    throw new JinjaError($"cannot assign attribute '{ga.Attr}' on '{ns.Name}': only namespace() objects can be changed");
                nsv.Attrs[ga.Attr] = value;
                return;
            }
        }
        throw new JinjaError("cannot assign to this expression");
    }

    // ---------------------------------------------------------------- expressions

    public object? Eval(Expr e, Scope scope)
    {
        var value = EvalCore(e, scope);
        CheckSize(value);
        return value;
    }

    private object? EvalCore(Expr e, Scope scope)
    {
        System.Runtime.CompilerServices.RuntimeHelpers.EnsureSufficientExecutionStack();
        switch (e)
        {
            case ConstExpr c: return c.Value;
            case NameExpr n: return scope.TryGet(n.Name, out var v) ? v : new Undefined($"'{n.Name}' is undefined");
            case ListExpr l: return l.Items.Select(x => Eval(x, scope)).ToList();
            case TupleExpr t: return new PyTuple(t.Items.Select(x => Eval(x, scope)));
            case DictExpr d:
            {
                var dict = new PyDict();
                foreach (var (k, val) in d.Pairs)
                {
                    var key = Eval(k, scope);
                    if (key is null or Undefined or List<object?> and not PyTuple or PyDict)
                        throw new JinjaError($"unsupported dict key of type '{Py.TypeName(key)}'");
                    dict[key] = Eval(val, scope);
                }
                return dict;
            }
            case GetAttrExpr ga: return GetAttr(Eval(ga.Obj, scope), ga.Attr);
            case GetItemExpr gi: return GetItem(Eval(gi.Obj, scope), Eval(gi.Key, scope));
            case SliceExpr se: return Slice(Eval(se.Obj, scope), SliceBound(se.Start, scope), SliceBound(se.Stop, scope), SliceBound(se.Step, scope));
            case CallExpr call:
            {
                var callee = Eval(call.Func, scope);
                var (args, kwargs) = EvalArgs(call.Args, call.Kwargs, scope);
                return Invoke(callee, args, kwargs);
            }
            case FilterExpr f: return ApplyFilter(f, Eval(f.Value!, scope), scope);
            case TestExpr t:
            {
                var value = Eval(t.Value, scope);
                var args = t.Args.Select(a => Eval(a, scope)).ToList();
                return Tests.Apply(t.Name, value, args) != t.Negated;
            }
            case UnaryExpr u:
            {
                var x = Eval(u.Operand, scope);
                return u.Op switch
                {
                    "not" => !Py.Truthy(x),
                    "-" => x switch
                    {
                        long l => (object)checked(-l), double d => -d, bool b => b ? -1L : 0L,
                        Undefined und => throw und.Fail(),
                        _ => throw new JinjaError($"bad operand type for unary -: '{Py.TypeName(x)}'"),
                    },
                    _ => Py.IsNumber(x) ? (x is bool b2 ? (b2 ? 1L : 0L) : x)
                        : x is Undefined und2 ? throw und2.Fail() : throw new JinjaError($"bad operand type for unary +: '{Py.TypeName(x)}'"),
                };
            }
            case BinaryExpr b:
            {
                var left = Eval(b.Left, scope);
                if (b.Op == "and") return Py.Truthy(left) ? Eval(b.Right, scope) : left;
                if (b.Op == "or") return Py.Truthy(left) ? left : Eval(b.Right, scope);
                return Operators.Binary(b.Op, left, Eval(b.Right, scope));
            }
            case ConcatExpr c:
            {
                var sb = new StringBuilder();
                foreach (var p in c.Parts) sb.Append(Py.Str(Eval(p, scope)));
                return sb.ToString();
            }
            case CompareExpr c:
            {
                var left = Eval(c.First, scope);
                foreach (var (op, rightExpr) in c.Ops)
                {
                    var right = Eval(rightExpr, scope);
                    if (!Operators.Compare(op, left, right)) return false;
                    left = right;
                }
                return true;
            }
            case CondExpr c:
                if (Py.Truthy(Eval(c.Test, scope))) return Eval(c.IfTrue, scope);
                return c.IfFalse is null
                    ? new Undefined("the inline if-expression evaluated to false and no else section was defined")
                    : Eval(c.IfFalse, scope);
        }
        throw new JinjaError($"unsupported expression {e.GetType().Name}");
    }

    private long? SliceBound(Expr? e, Scope scope)
    {
        if (e is null) return null;
        return Eval(e, scope) switch
        {
            null => null,
            long l => l,
            bool b => b ? 1 : 0,
            var v => throw new JinjaError($"slice indices must be integers or None, not {Py.TypeName(v)}"),
        };
    }

    private (List<object?>, Dictionary<string, object?>) EvalArgs(List<Expr> args, List<(string Name, Expr Value)> kwargs, Scope scope)
    {
        var a = args.Select(x => Eval(x, scope)).ToList();
        var kw = new Dictionary<string, object?>();
        foreach (var (name, value) in kwargs) kw[name] = Eval(value, scope);
        return (a, kw);
    }

    public object? Invoke(object? callee, List<object?> args, Dictionary<string, object?> kwargs) => callee switch
    {
        ICallable c => c.Call(this, args, kwargs),
        Undefined u => throw u.Fail(),
        _ => throw new JinjaError($"'{Py.TypeName(callee)}' object is not callable"),
    };

    private object? ApplyFilter(FilterExpr f, object? value, Scope scope)
    {
        var (args, kwargs) = EvalArgs(f.Args, f.Kwargs, scope);
        return Filters.Apply(this, f.Name, value, new Args(f.Name, args, kwargs));
    }

    // ---------------------------------------------------------------- attribute and item access (Jinja's sandboxed getattr/getitem)

    public static object? GetAttr(object? obj, string name)
    {
        switch (obj)
        {
            case Undefined u: throw u.Fail();
            case LoopInfo loop: return loop.Get(name);
            case Namespace ns:
                return ns.Attrs.TryGetValue(name, out var nv) ? nv : new Undefined($"'Namespace' object has no attribute '{name}'");
        }
        var method = Methods.Lookup(obj, name);
        if (method is not null) return method;
        if (obj is PyDict d && d.TryGetValue(name, out var v)) return v;
        return new Undefined($"'{Py.TypeName(obj)} object' has no attribute '{name}'");
    }

    public static object? GetItem(object? obj, object? key)
    {
        switch (obj)
        {
            case Undefined u: throw u.Fail();
            case PyDict d when key is not null && key is not (List<object?> and not PyTuple) && d.TryGetValue(key, out var v): return v;
            case List<object?> l when key is long or bool:
            {
                long i = Py.ToLong(key);
                if (i < 0) i += l.Count;
                return i >= 0 && i < l.Count ? l[(int)i] : new Undefined($"{Py.TypeName(obj)} index {key} out of range");
            }
            case string s when key is long or bool:
            {
                var cps = Py.CodePoints(s);
                long i = Py.ToLong(key);
                if (i < 0) i += cps.Count;
                return i >= 0 && i < cps.Count ? cps[(int)i] : new Undefined($"string index {key} out of range");
            }
        }
        if (key is string name) return GetAttr(obj, name);
        return new Undefined($"'{Py.TypeName(obj)} object' has no item {Py.Repr(key)}");
    }

    private static object? Slice(object? obj, long? start, long? stop, long? step)
    {
        switch (obj)
        {
            case Undefined u: throw u.Fail();
            case string s:
            {
                var cps = Py.CodePoints(s);
                return string.Concat(Py.SliceIndices(cps.Count, start, stop, step).Select(i => cps[i]));
            }
            case List<object?> l:
            {
                var items = Py.SliceIndices(l.Count, start, stop, step).Select(i => l[i]);
                return l is PyTuple ? new PyTuple(items) : items.ToList();
            }
        }
        throw new JinjaError($"'{Py.TypeName(obj)}' object cannot be sliced");
    }
}
