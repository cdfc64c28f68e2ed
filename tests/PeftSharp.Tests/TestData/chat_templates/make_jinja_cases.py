"""Writes jinja_cases.json: templates rendered by Python Jinja2 configured as transformers' chat-template renderer
(ImmutableSandboxedEnvironment, trim_blocks, lstrip_blocks, loopcontrols, HF's tojson and raise_exception).
Each case has `expected` (the rendering) or `error` (the Jinja2 exception type). Run: python3 make_jinja_cases.py"""
import json, os
import jinja2
from jinja2.ext import loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment


def raise_exception(message):
    raise jinja2.exceptions.TemplateError(message)


def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
env.filters["tojson"] = tojson
env.globals["raise_exception"] = raise_exception

M = {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                  {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "Bye"}]}
D = {"d": {"b": 2, "a": 1, "C": 3}, "xs": [3, 1, 2], "words": ["b", "A", "c", "a"], "s": "  Hello, World  ",
     "n": None, "f": 2.5, "i": 7, "t": True, "u": "ünï €𝔘", "items": [{"name": "x", "v": 1, "on": True},
     {"name": "y", "v": 2, "on": False}, {"name": "z", "v": 3, "on": True}]}

CASES = [
    # whitespace control and HF's trim_blocks / lstrip_blocks
    ("trim_blocks", "{% if true %}\nyes\n{% endif %}\nend", {}),
    ("lstrip_blocks", "a\n    {% if true %}\n    b\n    {% endif %}\nc", {}),
    ("lstrip_not_after_text", "a  {% if true %}b{% endif %}", {}),
    ("lstrip_not_variables", "x\n    {{ 'v' }}\n", {}),
    ("minus_both", "a   {%- if true -%}   b   {%- endif -%}   c", {}),
    ("minus_var", "a\n\n  {{- 'v' -}}  \n\nb", {}),
    ("plus_disables_lstrip", "a\n    {%+ if true %}b{% endif %}", {}),
    ("plus_disables_trim", "{% if true +%}\nb{% endif %}", {}),
    ("comment_trim", "a\n  {# note #}\nb", {}),
    ("comment_minus", "a  {#- note -#}  b", {}),
    ("trailing_newline_dropped", "abc\n", {}),
    ("only_one_trailing_newline_dropped", "abc\n\n", {}),
    ("crlf_normalised", "a\r\n{% if true %}\r\nb\r\n{% endif %}\r\n", {}),
    ("raw", "{% raw %}{{ not parsed }} {% if %}{% endraw %}!", {}),
    ("raw_minus", "a {%- raw -%}  x  {%- endraw -%} b", {}),
    ("var_no_trim_newline", "{{ 'a' }}\nb", {}),
    ("nested_blocks_indent", "{% for x in xs %}\n  {% if x > 1 %}\n    [{{ x }}]\n  {% endif %}\n{% endfor %}", D),
    # literals and output
    ("literals", "{{ 1 }}|{{ 1.5 }}|{{ 'a' \"b\" }}|{{ true }}|{{ False }}|{{ none }}|{{ [1, 'x', none, true] }}|{{ {'k': 'v', 'n': 1} }}|{{ (1, 2) }}|{{ (1,) }}", {}),
    ("floats", "{{ 1e20 }}|{{ 1e16 }}|{{ 1e15 }}|{{ 0.1 + 0.2 }}|{{ 1 / 3 }}|{{ 0.00001 }}|{{ 0.0001 }}|{{ 10 / 2 }}|{{ -0.0 }}", {}),
    ("string_escapes", "{{ 'a\\nb\\tc\\\\d\\'e\\u00e9\\x41' }}", {}),
    ("repr_quotes", "{{ [\"it's\", 'say \"hi\"', 'both \\' \"', 'nl\\n', 'ünï'] }}", {}),
    ("undefined_renders_empty", "[{{ missing }}][{{ d.missing }}][{{ d['missing'] }}]", D),
    ("none_renders_None", "{{ n }}", D),
    # arithmetic and operators
    ("arith", "{{ 7 // 2 }} {{ -7 // 2 }} {{ 7 % 3 }} {{ -7 % 3 }} {{ 2 ** 10 }} {{ 7 / 2 }} {{ 1 + 2 * 3 }} {{ (1 + 2) * 3 }} {{ 2 ** -1 }}", {}),
    ("float_ops", "{{ 7.5 // 2 }} {{ 7.5 % 2 }} {{ f * 2 }} {{ i - f }}", D),
    ("concat", "{{ 'a' ~ 1 ~ none ~ true ~ missing ~ 2.0 }}", {}),
    ("str_mul", "{{ 'ab' * 3 }}{{ [1] * 2 }}", {}),
    ("list_add", "{{ [1, 2] + [3] }}", {}),
    ("bool_arith", "{{ true + 1 }}", {}),
    ("compare_chain", "{{ 1 < 2 < 3 }} {{ 1 < 3 < 2 }} {{ 'a' < 'b' }} {{ [1, 2] < [1, 3] }} {{ 1 == 1.0 }} {{ 1 == true }} {{ 'a' != 'b' }}", {}),
    ("in_ops", "{{ 'ell' in 'hello' }} {{ 2 in xs }} {{ 'a' in d }} {{ 'z' not in d }} {{ 5 not in xs }}", D),
    ("and_or_values", "{{ 0 or 'x' }} {{ 'a' and 'b' }} {{ '' and 'b' }} {{ none or none }} {{ not 0 }} {{ not not 'x' }}", {}),
    ("precedence_filter_vs_minus", "{{ xs|length - 1 }} {{ -(xs|length) }} {{ 'a' + 'b'|upper }}", D),
    ("cond_expr", "{{ 'y' if t else 'n' }} {{ 'y' if n else 'n' }} [{{ 'y' if n }}] {{ 1 if false else 2 if false else 3 }}", D),
    # access
    ("attr_and_item", "{{ d.a }} {{ d['b'] }} {{ items[0].name }} {{ items[-1]['v'] }} {{ xs.1 }} {{ items[5] is defined }}", D),
    ("dict_method_priority", "{{ obj.items() | list }} {{ obj['items'] }}", {"obj": {"items": "key", "a": 1}}),
    ("none_attr_is_undefined", "{{ n.x is defined }}", D),
    ("slices", "{{ xs[1:] }} {{ xs[::-1] }} {{ xs[:-1] }} {{ xs[-2:] }} {{ xs[::2] }} {{ 'hello'[1:3] }} {{ 'hello'[::-1] }} {{ xs[5:] }} {{ xs[-10:1] }} {{ xs[2:0:-1] }}", D),
    ("unicode_len_slice", "{{ u|length }} {{ u[-1] }} {{ u[:3] }} {{ u|reverse }} {{ u|list }}", D),
    # tests
    ("tests", "{{ n is none }} {{ d is mapping }} {{ xs is sequence }} {{ 'x' is string }} {{ 1 is number }} {{ t is number }} {{ 1.0 is integer }} {{ 1 is integer }} {{ 1.0 is float }} {{ t is boolean }} {{ t is true }} {{ 1 is true }} {{ false is false }} {{ missing is undefined }} {{ d is iterable }} {{ 3 is odd }} {{ 4 is even }} {{ 9 is divisibleby 3 }} {{ 9 is divisibleby(4) }} {{ 'a' is in 'abc' }} {{ 2 is eq 2 }} {{ 'ab' is lower }} {{ 'AB' is upper }} {{ 3 is gt 2 }} {{ range is callable }}", D),
    ("is_not", "{{ n is not none }} {{ d.a is not defined }} {{ 'x' is not string }}", D),
    # for loops
    ("loop_vars", "{% for x in xs %}{{ loop.index }}{{ loop.index0 }}{{ loop.revindex }}{{ loop.revindex0 }}{{ loop.first }}{{ loop.last }}{{ loop.length }}|{% endfor %}", D),
    ("loop_prev_next", "{% for x in xs %}{{ loop.previtem }}<{{ x }}>{{ loop.nextitem }};{% endfor %}", D),
    ("loop_cycle", "{% for x in xs %}{{ loop.cycle('odd', 'even') }} {% endfor %}", D),
    ("for_else", "{% for x in [] %}x{% else %}empty{% endfor %}|{% for x in xs %}{{ x }}{% else %}empty{% endfor %}", D),
    ("for_unpack", "{% for k, v in d.items() %}{{ k }}={{ v }};{% endfor %}{% for a, b in [[1, 2], (3, 4)] %}{{ a + b }}{% endfor %}", D),
    ("for_filter_inline_if", "{% for x in xs if x > 1 %}{{ x }}:{{ loop.index }}/{{ loop.length }} {% endfor %}", D),
    ("for_over_dict", "{% for k in d %}{{ k }}{% endfor %}", D),
    ("for_over_string", "{% for c in 'abc' %}[{{ c }}]{% endfor %}", {}),
    ("for_filter_in_iterable", "{% for m in messages|selectattr('role', 'equalto', 'user') %}{{ m.content }};{% endfor %}", M),
    ("for_break_continue", "{% for x in range(10) %}{% if x == 2 %}{% continue %}{% endif %}{% if x == 5 %}{% break %}{% endif %}{{ x }}{% endfor %}", {}),
    ("nested_loops", "{% for a in [1, 2] %}{% for b in 'xy' %}{{ loop.index }}{{ a }}{{ b }} {% endfor %}{{ loop.index }}|{% endfor %}", {}),
    ("loop_scoping", "{% set x = 'outer' %}{% for i in [1, 2] %}{% set x = 'inner' ~ i %}{{ x }} {% endfor %}{{ x }}", {}),
    ("loop_set_not_carried", "{% for i in [1, 2, 3] %}{% if i == 1 %}{% set y = 'set' %}{% endif %}[{{ y }}]{% endfor %}", {}),
    ("if_scope_leaks", "{% if true %}{% set y = 'set' %}{% endif %}{{ y }}", {}),
    ("namespace", "{% set ns = namespace(count=0, found=false) %}{% for x in xs %}{% set ns.count = ns.count + x %}{% if x == 2 %}{% set ns.found = true %}{% endif %}{% endfor %}{{ ns.count }} {{ ns.found }}", D),
    ("namespace_from_dict", "{% set ns = namespace({'a': 1}, b=2) %}{{ ns.a }}{{ ns.b }}{{ ns.c is defined }}", {}),
    ("set_tuple", "{% set a, b = 1, 2 %}{{ a }}{{ b }}{% set c = 1, 2 %}{{ c }}", {}),
    ("set_block", "{% set body %}\n  Hello {{ 'x' }}\n{% endset %}[{{ body }}]{% set up | upper %}abc{% endset %}{{ up }}", {}),
    ("with_block", "{% with a = 1, b = 2 %}{{ a + b }}{% endwith %}[{{ a }}]", {}),
    # macros
    ("macro", "{% macro greet(name, punct='!') %}Hello {{ name }}{{ punct }}{% endmacro %}{{ greet('A') }} {{ greet('B', '?') }} {{ greet(punct='.', name='C') }}", {}),
    ("macro_sees_outer", "{% set suffix = '#' %}{% macro m(x) %}{{ x }}{{ suffix }}{% endmacro %}{% for i in [1, 2] %}{{ m(i) }}{% endfor %}", {}),
    ("macro_varargs_kwargs", "{% macro m(a) %}{{ a }}{{ varargs }}{{ kwargs }}{% endmacro %}{{ m(1, 2, 3, k='v') }}", {}),
    ("macro_trim", "{% macro render(m) %}\n<{{ m.role }}>\n{% endmacro %}\n{% for m in messages %}\n{{ render(m) }}\n{% endfor %}", M),
    ("call_block", "{% macro wrap(tag) %}<{{ tag }}>{{ caller() }}</{{ tag }}>{% endmacro %}{% call wrap('b') %}bold {{ 1 + 1 }}{% endcall %}", {}),
    ("call_block_args", "{% macro each(xs) %}{% for x in xs %}{{ caller(x) }}{% endfor %}{% endmacro %}{% call(v) each([1, 2]) %}[{{ v }}]{% endcall %}", {}),
    ("filter_block", "{% filter upper %}abc {{ 'd' }}{% endfilter %}", {}),
    # filters
    ("f_trim", "[{{ s|trim }}] [{{ 'xxaxx'|trim('x') }}] [{{ ' \\t\\n a \\u3000'|trim }}]", D),
    ("f_case", "{{ 'hello wORLD'|upper }} {{ 'HeLLo'|lower }} {{ 'hello wORLD-foo(bar)x'|title }} {{ 'hELLO world'|capitalize }}", {}),
    ("f_length", "{{ xs|length }} {{ d|count }} {{ 'abc'|length }} {{ missing|length }}", D),
    ("f_replace", "{{ 'a-b-c'|replace('-', '+') }} {{ 'a-b-c'|replace('-', '', 1) }} {{ 'ab'|replace('', '.') }}", {}),
    ("f_join", "{{ xs|join(', ') }} {{ words|join }} {{ items|join('/', attribute='name') }}", D),
    ("f_first_last", "{{ xs|first }} {{ xs|last }} {{ 'abc'|first }} {{ 'abc'|last }} [{{ []|first }}]", D),
    ("f_default", "{{ missing|default('dflt') }} {{ n|default('dflt') }} {{ ''|default('dflt', true) }} {{ 'v'|d('x') }} {{ n|default('dflt', boolean=true) }}", D),
    ("f_list_string", "{{ 'ab'|list }} {{ d|list }} {{ 12|string ~ 'x' }} {{ xs|string }}", D),
    ("f_int_float", "{{ '42'|int }} {{ '4.7'|int }} {{ 'x'|int }} {{ 'x'|int(5) }} {{ 3.9|int }} {{ '2.5'|float }} {{ 3|float }} {{ 'x'|float }} {{ '0x1A'|int(0, 16) }} {{ true|int }}", {}),
    ("f_items_dictsort", "{{ d|items|list }} {{ d|dictsort }} {{ d|dictsort(true) }} {{ d|dictsort(by='value', reverse=true) }}", D),
    ("f_selectattr", "{{ items|selectattr('on')|map(attribute='name')|list }} {{ items|rejectattr('on')|map(attribute='name')|list }} {{ items|selectattr('v', 'gt', 1)|map(attribute='v')|list }} {{ messages|selectattr('role', '==', 'user')|list|length }}", {**D, **M}),
    ("f_select", "{{ xs|select('odd')|list }} {{ xs|reject('odd')|list }} {{ [0, 1, '', 'a', none]|select|list }}", D),
    ("f_map", "{{ words|map('upper')|list }} {{ items|map(attribute='missing', default='?')|list }} {{ xs|map('string')|join('-') }} {{ [[1, 2], [3, 4]]|map(attribute='1')|list }}", D),
    ("f_sort", "{{ xs|sort }} {{ xs|sort(reverse=true) }} {{ words|sort }} {{ words|sort(case_sensitive=true) }} {{ items|sort(attribute='v', reverse=true)|map(attribute='name')|join }}", D),
    ("f_unique_reverse", "{{ words|unique|list }} {{ words|unique(case_sensitive=true)|list }} {{ xs|reverse|list }} {{ 'abc'|reverse }}", D),
    ("f_min_max_sum", "{{ xs|min }} {{ xs|max }} {{ words|max }} {{ xs|sum }} {{ items|sum(attribute='v') }} {{ items|max(attribute='v') }}", D),
    ("f_round_abs", "{{ 2.5|round }} {{ 3.5|round }} {{ 2.675|round(2) }} {{ 2.1|round(method='ceil') }} {{ 2.9|round(0, 'floor') }} {{ -3|abs }} {{ -2.5|abs }} {{ 7|round }}", {}),
    ("f_tojson", "{{ d|tojson }} {{ items|tojson }} {{ u|tojson }} {{ u|tojson(ensure_ascii=true) }} {{ 'q\"\\\\\\n\\t\\u0001'|tojson }} {{ [1.0, 2.5, none, true]|tojson }} {{ {}|tojson }} {{ []|tojson(indent=2) }}", D),
    ("f_tojson_indent", "{{ {'a': [1, {'b': none}], 'c': 'd'}|tojson(indent=2) }}\n{{ d|tojson(indent=4, sort_keys=true) }}\n{{ d|tojson(separators=(',', ':')) }}\n{{ xs|tojson(indent='\\t') }}", D),
    ("f_escape_safe", "{{ '<a href=\"x\">&\\'</a>'|e }} {{ '<b>'|escape }} {{ '<b>'|safe }}", {}),
    ("f_indent", "{{ 'a\\nb\\n\\nc'|indent }}|{{ 'a\\nb'|indent(2, true) }}|{{ 'a\\n\\nb'|indent(width='> ', blank=true) }}", {}),
    ("f_format", "{{ '%s-%d'|format('x', 3) }} {{ '%s and %s' % ('a', 'b') }} {{ '%05.2f' % 3.14159 if false else '%.2f' % 3.14159 }}", {}),
    ("f_attr", "{{ d|attr('a') }}", D),
    # string methods
    ("m_starts_ends", "{{ 'hello'.startswith('he') }} {{ 'hello'.endswith('lo') }} {{ 'hello'.startswith(('x', 'h')) }} {{ s.strip().endswith('World') }}", D),
    ("m_strip", "[{{ s.strip() }}] [{{ s.lstrip() }}] [{{ s.rstrip() }}] [{{ '\\n\\nx\\n'.strip('\\n') }}] [{{ 'xyabcyx'.strip('xy') }}] [{{ '<think>r'.lstrip('<think>') }}]", D),
    ("m_split", "{{ 'a,b,,c'.split(',') }} {{ '  a  b c '.split() }} {{ 'a,b,c'.split(',', 1) }} {{ 'a,b,c'.rsplit(',', 1) }} {{ 'a b  c'.split(none, 1) }} {{ 'x</think>y'.split('</think>')[-1] }} {{ ''.split() }} {{ ''.split(',') }}", {}),
    ("m_case_replace", "{{ 'ab cd'.upper() }} {{ 'AB'.lower() }} {{ \"they're 1st\".title() }} {{ 'aXb'.replace('X', '-') }} {{ 'hELLo'.capitalize() }}", {}),
    ("m_misc", "{{ 'a b'.find('b') }} {{ 'ab'.find('z') }} {{ 'aaa'.count('a') }} {{ '-'.join(['x', 'y']) }} {{ 'l1\\nl2\\r\\nl3'.splitlines() }} {{ '{} is {}'.format('x', 1) }} {{ '{0}{1}{0}'.format('a', 'b') }} {{ '{n}!'.format(n='k') }} {{ '12'.isdigit() }} {{ 'ab'.isalpha() }} {{ 'v1.txt'.removesuffix('.txt') }}", {}),
    ("m_dict", "{{ d.get('a') }} {{ d.get('zz') }} {{ d.get('zz', 'dflt') }} {{ d.keys()|list }} {{ d.values()|list }} {{ d.items()|list }}", D),
    ("m_list", "{{ xs.index(2) }} {{ xs.count(3) }}", D),
    # globals
    ("range", "{{ range(3)|list }} {{ range(1, 7, 2)|list }} {{ range(5, 0, -2)|list }} {{ range(0)|list }}", {}),
    ("dict_global", "{{ dict(a=1, b='x') }}", {}),
    # typical chat-template idioms
    ("chat_system_split", "{% if messages[0]['role'] == 'system' %}{% set sys = messages[0]['content'] %}{% set loop_messages = messages[1:] %}{% else %}{% set loop_messages = messages %}{% endif %}{{ sys }}|{% for m in loop_messages %}{{ m.role[0] }}{% endfor %}", M),
    ("chat_content_list", "{% for m in messages %}{% if m.content is string %}{{ m.content }}{% else %}{% for c in m.content %}{% if c.type == 'text' %}{{ c.text }}{% elif c.type == 'image' %}<img>{% endif %}{% endfor %}{% endif %}\n{% endfor %}",
     {"messages": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is this?"}]}, {"role": "assistant", "content": "A cat."}]}),
    ("chat_tool_calls", "{% for m in messages %}{% if m.tool_calls %}{% for tc in m.tool_calls %}{% set f = tc.function if tc.function is defined else tc %}{{ f.name }}({{ f.arguments|tojson }}){% endfor %}{% else %}{{ m.content }}{% endif %};{% endfor %}",
     {"messages": [{"role": "user", "content": "Weather?"}, {"role": "assistant", "content": None, "tool_calls": [{"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Zürich", "units": ["c"], "n": 1.5}}}]}]}),
    ("chat_last_user_index", "{% set ns = namespace(idx=-1) %}{% for m in messages %}{% if m.role == 'user' %}{% set ns.idx = loop.index0 %}{% endif %}{% endfor %}{{ ns.idx }}", M),
    ("chat_messages_reversed", "{% for m in messages[::-1] %}{{ (messages|length - 1) - loop.index0 }}{{ m.role[0] }} {% endfor %}", M),
]

ERRORS = [
    ("err_raise_exception", "{{ raise_exception('Roles must alternate') }}", {}),
    ("err_undefined_attr_chain", "{{ missing.attr }}", {}),
    ("err_add_str_int", "{{ 'a' + 1 }}", {}),
    ("err_add_undefined", "{{ missing + 'x' }}", {}),
    ("err_unknown_filter", "{{ 'x'|nosuchfilter }}", {}),
    ("err_unknown_test", "{{ 'x' is nosuchtest }}", {}),
    ("err_unknown_tag", "{% nosuchtag %}", {}),
    ("err_unclosed_if", "{% if true %}x", {}),
    ("err_unclosed_var", "{{ 'x' ", {}),
    ("err_list_append", "{% set l = [1] %}{{ l.append(2) }}", {}),
    ("err_set_attr_non_namespace", "{% set d = {} %}{% set d.x = 1 %}", {}),
    ("err_call_undefined", "{{ nosuchfunc() }}", {}),
    ("err_iterate_none", "{% for x in none %}{% endfor %}", {}),
    ("err_division_by_zero", "{{ 1 / 0 }}", {}),
    ("err_tojson_undefined", "{{ missing|tojson }}", {}),
    ("err_compare_str_int", "{{ 'a' < 1 }}", {}),
    ("err_include", "{% include 'x.jinja' %}", {}),
    ("err_macro_too_many_args", "{% macro m(a) %}{{ a }}{% endmacro %}{{ m(1, 2) }}", {}),
]


def main():
    out = []
    for name, template, ctx in CASES:
        try:
            expected = env.from_string(template).render(**ctx)
        except Exception as e:
            raise SystemExit(f"{name}: Jinja2 failed: {e!r}")
        out.append({"name": name, "template": template, "context": ctx, "expected": expected})
    for name, template, ctx in ERRORS:
        try:
            env.from_string(template).render(**ctx)
        except Exception as e:  # the type is recorded; the C# side only asserts that rendering fails
            out.append({"name": name, "template": template, "context": ctx, "error": type(e).__name__})
        else:
            raise SystemExit(f"{name}: expected Jinja2 to fail")
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "jinja_cases.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump({"generator": f"Jinja2 {jinja2.__version__}, transformers' chat-template settings", "cases": out},
                  f, ensure_ascii=False, indent=1)
        f.write("\n")
    print(f"{len(out)} cases -> {path}")


if __name__ == "__main__":
    main()
