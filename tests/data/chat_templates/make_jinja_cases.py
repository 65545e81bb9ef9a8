#!/usr/bin/env python3
"""Writes jinja_cases.json: small templates with the output jinja2 gives them in the
environment transformers renders chat templates with (ImmutableSandboxedEnvironment,
trim_blocks, lstrip_blocks, loopcontrols, its tojson, raise_exception, strftime_now).
The C++ test src/kiln/chat/jinja_test.cc renders every case and compares.
Run: python3 make_jinja_cases.py  (needs jinja2 3.x)."""
import json
import os

import jinja2
import jinja2.ext
import jinja2.nodes
from jinja2.ext import loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment


class Generation(jinja2.ext.Extension):
    """transformers' AssistantTracker, which renders {% generation %} blocks as they are."""
    tags = {"generation"}

    def parse(self, parser):
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_render", []), [], [], body).set_lineno(lineno)

    def _render(self, caller):
        return caller()


def make_env():
    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                          sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[loopcontrols, Generation])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    return env


M = [{"role": "system", "content": "Be brief."},
     {"role": "user", "content": "Hi"},
     {"role": "assistant", "content": "Hello!"},
     {"role": "user", "content": "Bye"}]

CASES = [
    # text, whitespace control
    ("text", "plain text", {}),
    ("trailing_newline_dropped", "a\n", {}),
    ("two_trailing_newlines", "a\n\n", {}),
    ("crlf", "a\r\nb\rc", {}),
    ("trim_blocks", "{% if true %}\nyes\n{% endif %}\nafter", {}),
    ("lstrip_blocks", "  {% if true %}\n  yes\n  {% endif %}\n", {}),
    ("lstrip_not_after_text", "x  {% if true %}y{% endif %}", {}),
    ("lstrip_not_for_variables", "  {{ 1 }}\n  {{ 2 }}", {}),
    ("minus_strips", "a  \n {{- 'b' -}} \n c", {}),
    ("minus_block", "a\n  {%- if true -%}\n  b  \n{%- endif -%}\n  c", {}),
    ("plus_keeps", "  {%+ if true +%}\nx{% endif %}", {}),
    ("comment", "a {# note #} b\n  {# c #}\nd", {}),
    ("comment_minus", "a  {#- note -#}  b", {}),
    ("raw", "{% raw %}{{ not rendered }}{% endraw %}!", {}),
    ("var_no_trim", "{{ 'a' }}\nb", {}),
    # literals and printing
    ("literals", "{{ 1 }} {{ -2 }} {{ 1.5 }} {{ 1e3 }} {{ 2.0 }} {{ 1_000 }} {{ 'a' \"b\" }}", {}),
    ("bool_none", "{{ true }} {{ False }} {{ none }} {{ None }}", {}),
    ("string_escapes", "{{ 'a\\nb\\t\\'c\\\\d\\u00e9\\x41' }}", {}),
    ("print_list", "{{ [1, 'a', none, true, 1.5, [2], {'k': 'v'}] }}", {}),
    ("print_tuple", "{{ (1,) }} {{ (1, 2) }} {{ () }}", {}),
    ("print_dict", "{{ {'a': 1, 'b': \"it's\"} }}", {}),
    ("print_floats", "{{ 0.1 + 0.2 }} {{ 1e16 }} {{ 1e-5 }} {{ 123456789.0 }} {{ 1/3 }}", {}),
    ("undefined_prints_empty", "[{{ nothing }}]", {}),
    ("json_values", "{{ x }} {{ y }} {{ z }}", {"x": {"b": 1, "a": [True, None]}, "y": 2.5, "z": "s"}),
    # arithmetic
    ("arith_int", "{{ 7 + 3 }} {{ 7 - 10 }} {{ 7 * 3 }} {{ 7 / 2 }} {{ 8 / 2 }} {{ 7 // 2 }} {{ -7 // 2 }} {{ 7 % 3 }} {{ -7 % 3 }} {{ 2 ** 10 }}", {}),
    ("arith_float", "{{ 7.5 // 2 }} {{ 7.5 % 2 }} {{ 2 ** -1 }} {{ 1 + 1.0 }} {{ true + 1 }}", {}),
    ("pow_left_assoc", "{{ 2 ** 3 ** 2 }}", {}),
    ("precedence", "{{ 1 + 2 * 3 }} {{ (1 + 2) * 3 }} {{ -2 ** 2 }} {{ 10 - 2 - 3 }}", {}),
    ("concat", "{{ 'a' ~ 1 ~ none ~ nothing ~ [1] }}", {}),
    ("string_ops", "{{ 'ab' + 'cd' }} {{ 'ab' * 3 }} {{ [1] * 2 }} {{ [1] + [2] }}", {}),
    ("comparisons", "{{ 1 < 2 }} {{ 2 <= 2 }} {{ 'a' > 'b' }} {{ 1 == 1.0 }} {{ 1 != 2 }} {{ [1, 2] < [1, 3] }} {{ none == none }}", {}),
    ("in_operator", "{{ 'a' in 'cat' }} {{ 2 in [1, 2] }} {{ 'k' in {'k': 1} }} {{ 3 not in [1] }} {{ 'x' not in 'xyz' }}", {}),
    ("logic", "{{ true and 'x' }} {{ 0 or 'y' }} {{ not 0 }} {{ not [] }} {{ '' or [] }} {{ none and 1 }}", {}),
    ("inline_if", "{{ 'a' if true else 'b' }} {{ 'a' if 0 else 'b' }} [{{ 'a' if false }}]", {}),
    ("truthiness", "{% for v in [0, 1, '', 'x', [], [0], {}, none, 0.0] %}{{ 'T' if v else 'F' }}{% endfor %}", {}),
    # if / for
    ("if_elif_else", "{% for n in [1, 2, 3] %}{% if n == 1 %}one{% elif n == 2 %}two{% else %}many{% endif %} {% endfor %}", {}),
    ("for_else", "{% for x in [] %}x{% else %}empty{% endfor %}", {}),
    ("for_loop_vars", "{% for x in 'abc' %}{{ loop.index }}{{ loop.index0 }}{{ loop.revindex }}{{ loop.revindex0 }}{{ loop.first }}{{ loop.last }}{{ loop.length }};{% endfor %}", {}),
    ("for_prev_next", "{% for x in [1, 2, 3] %}({{ loop.previtem }},{{ loop.nextitem }}){% endfor %}", {}),
    ("for_cycle", "{% for x in range(5) %}{{ loop.cycle('a', 'b') }}{% endfor %}", {}),
    ("for_filter", "{% for x in range(10) if x is odd %}{{ x }}{{ loop.length }} {% endfor %}", {}),
    ("for_dict", "{% for k in {'b': 1, 'a': 2} %}{{ k }}{% endfor %}", {}),
    ("for_items", "{% for k, v in d.items() %}{{ k }}={{ v }};{% endfor %}", {"d": {"z": 1, "a": [2]}}),
    ("for_unpack_paren", "{% for (a, b) in [[1, 2], [3, 4]] %}{{ a + b }}{% endfor %}", {}),
    ("for_nested_loop", "{% for a in [1, 2] %}{% for b in [3, 4] %}{{ loop.index }}{% endfor %}{{ loop.index }}|{% endfor %}", {}),
    ("break_continue", "{% for x in range(10) %}{% if x == 2 %}{% continue %}{% endif %}{% if x == 5 %}{% break %}{% endif %}{{ x }}{% endfor %}", {}),
    ("for_scope", "{% set x = 5 %}{% for i in [1, 2] %}[{{ x }}]{% set x = i %}{% endfor %}{{ x }}", {}),
    ("for_string", "{% for c in 'hé' %}<{{ c }}>{% endfor %}", {}),
    ("loop_over_undefined", "{% for x in nothing %}x{% else %}none{% endfor %}", {}),
    ("for_tuple_literal", "{% for x in 1, 2 %}{{ x }}{% endfor %}", {}),
    # set, namespace, macros
    ("set", "{% set a = 1 %}{% set b, c = 2, 3 %}{{ a }}{{ b }}{{ c }}", {}),
    ("set_in_if_leaks", "{% if true %}{% set y = 3 %}{% endif %}{{ y }}", {}),
    ("set_block", "{% set body %}\n  hello {{ 1 }}\n{% endset %}[{{ body }}]", {}),
    ("set_block_filter", "{% set body | upper %}abc{% endset %}{{ body }}", {}),
    ("namespace", "{% set ns = namespace(count=0, found=false) %}{% for x in [1, 2, 3] %}{% set ns.count = ns.count + x %}{% if x == 2 %}{% set ns.found = true %}{% endif %}{% endfor %}{{ ns.count }} {{ ns.found }}", {}),
    ("namespace_new_attr", "{% set ns = namespace() %}{% set ns.x = 'v' %}{{ ns.x }}", {}),
    ("macro", "{% macro greet(name, greeting='Hello') %}{{ greeting }}, {{ name }}!{% endmacro %}{{ greet('Ann') }} {{ greet('Bob', 'Hi') }} {{ greet(greeting='Yo', name='Cy') }}", {}),
    ("macro_sees_globals", "{% macro m() %}{{ x }}{% endmacro %}{% set x = 1 %}{{ m() }}", {}),
    ("macro_recursion", "{% macro f(n) %}{% if n > 0 %}{{ n }}{{ f(n - 1) }}{% endif %}{% endmacro %}{{ f(3) }}", {}),
    ("macro_render_json", "{% macro render(v) %}{% if v is mapping %}{% for k, x in v.items() %}{{ k }}:{{ render(x) }} {% endfor %}{% else %}{{ v }}{% endif %}{% endmacro %}{{ render(d) }}", {"d": {"a": {"b": 1}, "c": 2}}),
    ("filter_block", "{% filter upper %}abc {{ 'd' }}{% endfilter %}", {}),
    ("generation_block", "{% generation %}gen{% endgeneration %}", {}),
    # attribute and item access
    ("attr_dict_key", "{{ m.role }} {{ m['content'] }} {{ m.get('role') }} {{ m.get('x', 'dflt') }} {{ m.get('x') }}", {"m": M[0]}),
    ("index_negative", "{{ l[0] }}{{ l[-1] }}{{ l[-2] }}{{ 'abc'[1] }}{{ 'abc'[-1] }}", {"l": [1, 2, 3]}),
    ("missing_key_undefined", "{{ m.missing is defined }} {{ m['missing'] is undefined }} [{{ m.missing }}] {{ l[10] is defined }}", {"m": {}, "l": []}),
    ("slices", "{{ l[1:] }} {{ l[:2] }} {{ l[::-1] }} {{ l[::2] }} {{ l[-2:] }} {{ l[1:-1] }} {{ 'hello'[1:3] }} {{ 'hello'[::-1] }} {{ l[5:] }} {{ l[3:0:-1] }}", {"l": [1, 2, 3, 4]}),
    ("messages_slice", "{% for m in messages[1:] %}{{ m.role }} {% endfor %}", {"messages": M}),
    ("dotted_index", "{{ l.0 }} {{ t.1 }}", {"l": [7, 8], "t": [5, 6]}),
    ("none_attr", "[{{ x.foo }}] {{ x.foo is defined }}", {"x": None}),
    # string methods
    ("str_strip", "[{{ '  a b  '.strip() }}][{{ 'xxaxx'.strip('x') }}][{{ '  a'.lstrip() }}][{{ 'a\\n\\n'.rstrip('\\n') }}][{{ 'abc'.lstrip('ba') }}]", {}),
    ("str_split", "{{ 'a,b,,c'.split(',') }} {{ '  a  b '.split() }} {{ 'a b c'.split(' ', 1) }} {{ 'a,b,c'.rsplit(',', 1) }} {{ 'x</think>y'.split('</think>')[-1] }}", {}),
    ("str_starts_ends", "{{ 'hello'.startswith('he') }} {{ 'hello'.endswith('lo') }} {{ 'hello'.startswith(('x', 'h')) }} {{ 'hello'.endswith('x') }}", {}),
    ("str_case", "{{ 'aBc dEF'.upper() }} {{ 'aBc'.lower() }} {{ 'hello world'.title() }} {{ 'hELLO'.capitalize() }} {{ \"they're\".title() }}", {}),
    ("str_replace_find", "{{ 'aaa'.replace('a', 'b') }} {{ 'aaa'.replace('a', 'b', 2) }} {{ 'abcabc'.find('c') }} {{ 'abc'.find('z') }} {{ 'abcabc'.count('bc') }} {{ 'abcabc'.rfind('b') }}", {}),
    ("str_format", "{{ '{} and {}'.format('a', 1) }} {{ '{0}{0}'.format('x') }} {{ '{name}!'.format(name='n') }}", {}),
    ("str_join_method", "{{ ', '.join(['a', 'b']) }}", {}),
    ("str_percent", "{{ '%s is %d' % ('x', 3) }} {{ '%05.2f' % 3.14159 }} {{ '%s' % 'one' }}", {}),
    ("str_splitlines", "{{ 'a\\nb\\r\\nc\\n'.splitlines() }}", {}),
    ("unicode_len", "{{ 'héllo ✓ 中'|length }} {{ 'héllo'[1] }} {{ 'ÉCOLE'.lower() }} {{ 'école'.upper() }}", {}),
    # dict methods
    ("dict_methods", "{{ d.keys()|list }} {{ d.values()|list }} {{ d.items()|list }} {{ d|length }}", {"d": {"x": 1, "y": 2}}),
    ("list_methods", "{{ [1, 2, 1].count(1) }} {{ [1, 2].index(2) }}", {}),
    # filters
    ("f_trim", "[{{ '  a  '|trim }}][{{ 'xax'|trim('x') }}][{{ nothing|trim }}]", {}),
    ("f_case", "{{ 'ab'|upper }} {{ 'AB'|lower }} {{ 'hello WORLD'|capitalize }} {{ 'hello world-wide (x)'|title }} {{ \"they're\"|title }}", {}),
    ("f_length", "{{ [1, 2]|length }} {{ 'abc'|count }} {{ {'a': 1}|length }} {{ nothing|length }}", {}),
    ("f_first_last", "{{ [1, 2, 3]|first }} {{ [1, 2, 3]|last }} {{ 'abc'|first }} [{{ []|first }}]", {}),
    ("f_join", "{{ [1, 2, 3]|join(', ') }} {{ ['a', 'b']|join }} {{ users|join(', ', attribute='name') }}", {"users": [{"name": "a"}, {"name": "b"}]}),
    ("f_default", "{{ nothing|default('d') }} {{ none|default('d') }} {{ ''|default('d', true) }} {{ 'x'|d('d') }} [{{ nothing|default }}]", {}),
    ("f_tojson", "{{ x|tojson }}", {"x": {"b": [1, 2.5, None, True], "a": "é \"q\" <tag> & \n \u0001", "n": {}, "l": []}}),
    ("f_tojson_indent", "{{ x|tojson(indent=2) }}", {"x": {"b": [1, {"c": None}], "e": [], "f": {}}}),
    ("f_tojson_sort", "{{ x|tojson(sort_keys=true) }} {{ 'é'|tojson(ensure_ascii=true) }} {{ '🦊'|tojson(true) }}", {"x": {"b": 1, "a": 2}}),
    ("f_tojson_separators", "{{ x|tojson(separators=(',', ':')) }}", {"x": {"a": [1, 2]}}),
    ("f_tojson_scalars", "{{ 1|tojson }} {{ 1.0|tojson }} {{ 'x'|tojson }} {{ none|tojson }} {{ false|tojson }} {{ (1, 2)|tojson }}", {}),
    ("f_string_int_float", "{{ 1|string }}{{ '12'|int + 1 }} {{ '3.7'|int }} {{ 'x'|int }} {{ 'x'|int(5) }} {{ 3.9|int }} {{ '2.5'|float }} {{ 2|float }} {{ 'x'|float }} {{ ' 7 '|int }} {{ true|int }}", {}),
    ("f_list_items", "{{ 'ab'|list }} {{ {'a': 1}|items|list }} {{ {'x': 1, 'y': 2}|list }}", {}),
    ("f_replace", "{{ 'hello'|replace('l', 'L') }} {{ 'hello'|replace('l', 'L', 1) }} {{ 'ab'|replace('', '-') }}", {}),
    ("f_safe_escape", "{{ '<b>'|safe }} {{ '<a href=\"x\">&\\'</a>'|escape }}", {}),
    ("f_indent", "[{{ 'a\\nb\\n\\nc'|indent }}][{{ 'a\\nb'|indent(2, true) }}][{{ 'a\\n\\nb'|indent(2, blank=true) }}][{{ 'a\\nb'|indent('> ') }}]", {}),
    ("f_select_reject", "{{ [1, 2, 3, 4]|select('odd')|list }} {{ [1, 2, 3, 4]|reject('even')|list }} {{ [0, 1, '', 'a']|select|list }} {{ [1, 5, 10]|select('gt', 3)|list }} {{ [1, 2]|select('equalto', 2)|list }}", {}),
    ("f_selectattr", "{{ msgs|selectattr('role', 'equalto', 'user')|map(attribute='content')|list }} {{ msgs|rejectattr('role', 'eq', 'user')|list|length }} {{ msgs|selectattr('tool')|list|length }}", {"msgs": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b", "tool": 1}, {"role": "user", "content": "c"}]}),
    ("f_map", "{{ ['a', 'b']|map('upper')|list }} {{ [{'x': 1}, {}]|map(attribute='x', default=0)|list }} {{ ['1', '2']|map('int')|sum }} {{ [[1, 2]]|map(attribute='0')|list }}", {}),
    ("f_unique_reverse_sort", "{{ ['a', 'A', 'b', 'a']|unique|list }} {{ [1, 2, 3]|reverse|list }} {{ 'abc'|reverse }} {{ [3, 1, 2]|sort }} {{ ['b', 'A', 'c']|sort }} {{ ['b', 'A', 'c']|sort(case_sensitive=true) }} {{ [3, 1, 2]|sort(reverse=true) }} {{ users|sort(attribute='age')|map(attribute='n')|list }}", {"users": [{"n": "x", "age": 3}, {"n": "y", "age": 1}]}),
    ("f_round_abs", "{{ 2.5|round }} {{ 3.5|round }} {{ 2.675|round(2) }} {{ 1.21|round(1, 'ceil') }} {{ 1.29|round(1, 'floor') }} {{ 5|round }} {{ -3|abs }} {{ -2.5|abs }}", {}),
    ("f_dictsort", "{{ {'b': 1, 'a': 3, 'C': 2}|dictsort }} {{ {'b': 1, 'a': 3}|dictsort(by='value') }} {{ {'b': 1, 'a': 3}|dictsort(reverse=true) }}", {}),
    ("f_wordcount_center", "{{ 'hello big world'|wordcount }} [{{ 'ab'|center(7) }}] [{{ 'abc'|center(8) }}]", {}),
    ("f_min_max_sum", "{{ [3, 1, 2]|min }} {{ [3, 1, 2]|max }} {{ [1, 2, 3]|sum }} {{ ['b', 'A']|min }}", {}),
    ("f_format", "{{ '%s-%s'|format('a', 'b') }}", {}),
    ("f_chain", "{{ '  Hello World  '|trim|lower|replace(' ', '_') }}", {}),
    ("f_on_expression", "{{ 'a' ~ 'b'|upper }} {{ (1 + 2)|string }} {{ -3|abs }}", {}),
    # tests
    ("t_types", "{{ 1 is number }}{{ 1.0 is float }}{{ 1 is integer }}{{ true is integer }}{{ true is boolean }}{{ 'a' is string }}{{ [1] is sequence }}{{ {} is mapping }}{{ 'a' is iterable }}{{ 1 is iterable }}{{ none is none }}{{ [] is mapping }}{{ true is number }}", {}),
    ("t_defined", "{{ x is defined }}{{ y is defined }}{{ y is undefined }}{{ x is not none }}{{ nothing is not none }}", {"x": None}),
    ("t_true_false", "{{ true is true }}{{ 1 is true }}{{ false is false }}{{ 0 is false }}", {}),
    ("t_compare", "{{ 2 is equalto 2 }}{{ 2 is eq(3) }}{{ 4 is divisibleby 2 }}{{ 5 is divisibleby(2) }}{{ 3 is odd }}{{ 3 is even }}{{ 2 is in [1, 2] }}{{ none is sameas none }}{{ 3 is gt 2 }}{{ 'a' is lower }}{{ 'A' is upper }}", {}),
    ("t_not", "{{ 1 is not string }}{{ 'x' is not string }}", {}),
    ("t_iterable_undefined", "{{ nothing is iterable }}{{ nothing is sequence }}{{ nothing is mapping }}{{ nothing is string }}", {}),
    ("t_content_types", "{% for m in msgs %}{% if m.content is string %}S{% elif m.content is iterable %}{% for p in m.content %}{{ p.text }}{% endfor %}{% endif %}{% endfor %}", {"msgs": [{"content": "x"}, {"content": [{"type": "text", "text": "y"}, {"type": "text", "text": "z"}]}]}),
    # globals
    ("range", "{{ range(3)|list }} {{ range(1, 4)|list }} {{ range(10, 0, -3)|list }} {{ range(0)|list }}", {}),
    ("dict_global", "{{ dict(a=1, b='x') }}", {}),
    ("tools_undefined", "{% if tools %}T{% else %}no tools{% endif %} {{ tools is defined }} {{ tools is not none }}", {}),
    # qwen3-like reverse loop with namespace
    ("qwen_reverse_index", "{% set ns = namespace(last=-1) %}{% for m in messages[::-1] %}{% set i = (messages|length - 1) - loop.index0 %}{% if ns.last == -1 and m.role == 'user' %}{% set ns.last = i %}{% endif %}{% endfor %}{{ ns.last }}", {"messages": M}),
    # errors (jinja2 raises; Kiln must raise too)
    ("err_attr_of_undefined", "{{ nothing.attr }}", {}),
    ("err_item_of_undefined", "{{ nothing[0] }}", {}),
    ("err_nested_missing", "{{ d.x.y }}", {"d": {}}),
    ("err_type_add", "{{ 'a' + 1 }}", {}),
    ("err_undefined_add", "{{ nothing + 1 }}", {}),
    ("err_div_zero", "{{ 1 / 0 }}", {}),
    ("err_call_undefined", "{{ nothing() }}", {}),
    ("err_raise", "{{ raise_exception('bad roles') }}", {}),
    ("err_unknown_filter", "{{ 1|nosuchfilter }}", {}),
    ("err_unknown_test", "{{ 1 is nosuchtest }}", {}),
    ("err_syntax_unclosed_if", "{% if true %}x", {}),
    ("err_syntax_bad_expr", "{{ 1 + }}", {}),
    ("err_unknown_tag", "{% frobnicate %}", {}),
    ("err_endfor_without_for", "{% endfor %}", {}),
    ("err_range_too_big", "{{ range(200000)|length }}", {}),
    ("err_tojson_undefined", "{{ nothing|tojson }}", {}),
    ("err_items_of_list", "{{ [1]|items|list }}", {}),
    ("err_set_attr_non_namespace", "{% set d = {} %}{% set d.x = 1 %}", {}),
]



LLAMA31_STYLE = """{{- bos_token }}
{%- if custom_tools is defined %}
    {%- set tools = custom_tools %}
{%- endif %}
{%- if not tools_in_user_message is defined %}
    {%- set tools_in_user_message = true %}
{%- endif %}
{%- if not date_string is defined %}
    {%- set date_string = "26 Jul 2024" %}
{%- endif %}
{%- if not tools is defined %}
    {%- set tools = none %}
{%- endif %}

{#- This block extracts the system message, so we can slot it into the right place. #}
{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content']|trim %}
    {%- set messages = messages[1:] %}
{%- else %}
    {%- set system_message = "" %}
{%- endif %}

{#- System message + builtin tools #}
{{- "<|start_header_id|>system<|end_header_id|>\\n\\n" }}
{%- if builtin_tools is defined or tools is not none %}
    {{- "Environment: ipython\\n" }}
{%- endif %}
{{- "Cutting Knowledge Date: December 2023\\n" }}
{{- "Today Date: " + date_string + "\\n\\n" }}
{%- if tools is not none and not tools_in_user_message %}
    {{- "You have access to the following functions." }}
{%- endif %}
{{- system_message }}
{{- "<|eot_id|>" }}

{#- Custom tools are passed in a user message with some extra guidance #}
{%- if tools_in_user_message and not tools is none %}
    {#- Extract the first user message so we can plug it in here #}
    {%- if messages | length != 0 %}
        {%- set first_user_message = messages[0]['content']|trim %}
        {%- set messages = messages[1:] %}
    {%- else %}
        {{- raise_exception("Cannot put tools in the first user message when there's no first user message!") }}
{%- endif %}
    {{- '<|start_header_id|>user<|end_header_id|>\\n\\n' -}}
    {{- "Given the following functions, please respond with a JSON for a function call " }}
    {{- "with its proper arguments that best answers the given prompt.\\n\\n" }}
    {%- for t in tools %}
        {{- t | tojson(indent=4) }}
        {{- "\\n\\n" }}
    {%- endfor %}
    {{- first_user_message + "<|eot_id|>"}}
{%- endif %}

{%- for message in messages %}
    {%- if not (message.role == 'ipython' or message.role == 'tool' or 'tool_calls' in message) %}
        {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | trim + '<|eot_id|>' }}
    {%- elif 'tool_calls' in message %}
        {%- if not message.tool_calls|length == 1 %}
            {{- raise_exception("This model only supports single tool-calls at once!") }}
        {%- endif %}
        {%- set tool_call = message.tool_calls[0].function %}
        {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' -}}
        {{- '{"name": "' + tool_call.name + '", ' }}
        {{- '"parameters": ' }}
        {{- tool_call.arguments | tojson }}
        {{- "}" }}
        {{- "<|eot_id|>" }}
    {%- elif message.role == "tool" or message.role == "ipython" %}
        {{- "<|start_header_id|>ipython<|end_header_id|>\\n\\n" }}
        {%- if message.content is mapping or message.content is iterable %}
            {{- message.content | tojson }}
        {%- else %}
            {{- message.content }}
        {%- endif %}
        {{- "<|eot_id|>" }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}
{%- endif %}
"""

MISTRAL_STYLE = """{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content'] %}
    {%- set loop_messages = messages[1:] %}
{%- else %}
    {%- set loop_messages = messages %}
{%- endif %}

{{- bos_token }}
{%- for message in loop_messages %}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}
        {{- raise_exception('After the optional system message, conversation roles must alternate user/assistant/user/assistant/...') }}
    {%- endif %}
    {%- if message['role'] == 'user' %}
        {%- if loop.first and system_message is defined %}
            {{- ' [INST] ' + system_message + '\\n\\n' + message['content'] + ' [/INST]' }}
        {%- else %}
            {{- ' [INST] ' + message['content'] + ' [/INST]' }}
        {%- endif %}
    {%- elif message['role'] == 'assistant' %}
        {{- ' ' + message['content'] + eos_token}}
    {%- else %}
        {{- raise_exception('Only user and assistant roles are supported, with the exception of an initial optional system message!') }}
    {%- endif %}
{%- endfor %}
"""

DEEPSEEK_STYLE = """{% if not add_generation_prompt is defined %}{% set add_generation_prompt = false %}{% endif %}{% set ns = namespace(is_first=false, is_tool=false, is_output_first=true, system_prompt='') %}{%- for message in messages %}{%- if message['role'] == 'system' %}{% set ns.system_prompt = message['content'] %}{%- endif %}{%- endfor %}{{bos_token}}{{ns.system_prompt}}{%- for message in messages %}{%- if message['role'] == 'user' %}{%- set ns.is_tool = false -%}{{'<\uff5cUser\uff5c>' + message['content']}}{%- endif %}{%- if message['role'] == 'assistant' and message['content'] is none %}{%- set ns.is_tool = false -%}{%- for tool in message['tool_calls']%}{%- if not ns.is_first %}{{'<\uff5cAssistant\uff5c><\uff5ctool\u2581calls\u2581begin\uff5c><\uff5ctool\u2581call\u2581begin\uff5c>' + tool['type'] + '<\uff5ctool\u2581sep\uff5c>' + tool['function']['name'] + '\\n' + '```json' + '\\n' + tool['function']['arguments'] + '\\n' + '```' + '<\uff5ctool\u2581call\u2581end\uff5c>'}}{%- set ns.is_first = true -%}{%- else %}{{'\\n' + '<\uff5ctool\u2581call\u2581begin\uff5c>' + tool['type'] + '<\uff5ctool\u2581sep\uff5c>' + tool['function']['name'] + '\\n' + '```json' + '\\n' + tool['function']['arguments'] + '\\n' + '```' + '<\uff5ctool\u2581call\u2581end\uff5c>'}}{{'<\uff5ctool\u2581calls\u2581end\uff5c><\uff5cend\u2581of\u2581sentence\uff5c>'}}{%- endif %}{%- endfor %}{%- endif %}{%- if message['role'] == 'assistant' and message['content'] is not none %}{%- if ns.is_tool %}{{'<\uff5ctool\u2581outputs\u2581end\uff5c>' + message['content'] + '<\uff5cend\u2581of\u2581sentence\uff5c>'}}{%- set ns.is_tool = false -%}{%- else %}{% set content = message['content'] %}{% if '</think>' in content %}{% set content = content.split('</think>')[-1] %}{% endif %}{{'<\uff5cAssistant\uff5c>' + content + '<\uff5cend\u2581of\u2581sentence\uff5c>'}}{%- endif %}{%- endif %}{%- if message['role'] == 'tool' %}{%- set ns.is_tool = true -%}{%- if ns.is_output_first %}{{'<\uff5ctool\u2581outputs\u2581begin\uff5c><\uff5ctool\u2581output\u2581begin\uff5c>' + message['content'] + '<\uff5ctool\u2581output\u2581end\uff5c>'}}{%- set ns.is_output_first = false %}{%- else %}{{'\\n<\uff5ctool\u2581output\u2581begin\uff5c>' + message['content'] + '<\uff5ctool\u2581output\u2581end\uff5c>'}}{%- endif %}{%- endif %}{%- endfor -%}{% if ns.is_tool %}{{'<\uff5ctool\u2581outputs\u2581end\uff5c>'}}{% endif %}{% if add_generation_prompt and not ns.is_tool %}{{'<\uff5cAssistant\uff5c><think>\\n'}}{% endif %}"""

MORE_CASES = [
    ("generators_are_true", "{{ 'T' if [1]|select('even') else 'F' }} {{ 'T' if []|map('upper') else 'F' }} {{ 'T' if []|reverse else 'F' }} {{ [1, 2]|select('odd')|first }} {{ [3, 1]|unique|list }} {{ [1, 2]|reverse|list }} {{ [1, 2]|select|list|length }}", {}),
    ("range_prints_as_range", "{{ range(3) }} {{ range(1, 9, 2) }} {{ range(2)|list }} {{ range(3)|length }} {{ range(3)[1] }}", {}),
    ("lower_upper_tests_on_str", "{{ '123' is lower }} {{ 'a1' is lower }} {{ 'A1' is upper }} {{ 5 is lower }} {{ {'n': 1} is lower }}", {}),
    ("odd_even_floats", "{{ 3.0 is odd }} {{ 0.1 is even }} {{ 4.0 is even }} {{ true is odd }}", {}),
    ("err_generator_length", "{{ [1]|select|length }}", {}),
    ("err_generator_last", "{{ [1]|map('string')|last }}", {}),
    ("not_subscriptable_is_undefined", "[{{ ([1]|select)[0] }}][{{ (5)[0] }}][{{ [1, 2]['x'] }}]", {}),
    ("lazy_errors_wait", "{% set v = none|select('defined') %}{% set w = 5|map('string') %}{% set u = [1]|map(attribute='x', defualt=0) %}{{ 'T' if v else 'F' }}", {}),
    ("safe_gives_a_string", "{{ true|safe|join(', ') }} {{ none|safe }}", {}),
    ("falsy_select_map_are_empty", "{{ none|select('defined')|list }}{{ 0|map('x')|list }}{{ false|rejectattr('a')|list }}", {}),
    ("err_lazy_error_when_consumed", "{% set v = 5|select('defined') %}{{ v|list }}", {}),
    ("err_slice_not_subscriptable", "{% set t = true %}{{ t[:2] }}", {}),
    ("err_slice_dict", "{% set d = {} %}{{ d[1:] }}", {}),
    ("err_slice_step_zero", "{{ [1, 2][::0] }}", {}),
    ("err_odd_string", "{{ 'a' is odd }}", {}),
    # found by comparing Kiln with jinja2 on fuzzed templates
    ("chained_compare", "{{ 1 < 2 < 3 }} {{ 3 > 2 > 2 }} {{ 'a' != 0 == 1.0 }} {{ 'a' in 'a' in 'cat' }} {{ 1 == 1 in [True] }}", {}),
    ("number_lexing", "{{ 0e3 }} {{ 00 }} {{ 0_0 }} {{ 00.5 }} {{ 1_0.2_5 }} {{ 20 != 0000 }} {{ 1E2 }}", {}),
    ("float_mod_zero_sign", "{{ -7.0 % 7 }} {{ 7.0 % -7 }} {{ -7 / -1 % 7 }}", {}),
    ("minus_strips_python_whitespace", "a\x1e\x1c {{- 'b' -}} \x1f\x0b c", {}),
    ("percent_mapping_like", "{{ 'x' % [] }}{{ 'y' % {} }}{{ 'z' % nothing }}", {}),
    ("err_number_leading_zero", "{{ 7 // 02 }}", {}),
    ("err_plus_is_not_a_variable_end", "{{ 7 +}}", {}),
    ("err_endmacro_with_name", "{% macro f() %}{% endmacro f %}", {}),
    ("err_test_extra_argument", "{{ 3 is odd even }}", {}),
    ("err_filter_unknown_keyword", "{{ [1]|sort(reversed=true) }}", {}),
    ("err_filter_too_many_arguments", "{{ 'a'|trim('a', 'b') }}", {}),
    ("err_map_unknown_keyword", "{{ [{}]|map(attribute='x', defualt=0)|list }}", {}),
    ("err_replace_missing_argument", "{{ 'a2b'|replace('') }}", {}),
    ("err_unique_unknown_keyword", "{% set v = [1]|unique(foo=1) %}", {}),
    ("err_method_too_many_arguments", "{{ 'a'.upper(1) }}", {}),
    ("err_int_of_undefined", "{{ nothing|int }}", {}),
    ("err_float_of_undefined", "{{ nothing|float }}", {}),
    ("err_strip_undefined_chars", "{{ 'a'.strip(nothing) }}", {}),
    ("err_percent_x_float", "{{ '%x' % 1.5 }}", {}),
    ("err_percent_c_float", "{{ '%c' % 65.0 }}", {}),
    ("ws_indented_blocks", "<s>\n  {% for m in msgs %}\n    {% if m %}\n      [{{ m }}]\n    {% endif %}\n  {% endfor %}\n</s>\n", {"msgs": ["a", "", "b"]}),
    ("ws_tabs_lstrip", "x\n\t \t{% if true %}y\n\t{% endif %}\tz", {}),
    ("ws_tag_after_text_same_line", "a {% if true %}b {% endif %} c\n  {%- if true %} d{% endif %}", {}),
    ("ws_block_at_end", "a\n  {% if true %}{% endif %}   ", {}),
    ("ws_comment_lines", "{# first #}\nA\n    {#- second -#}\n  B {# third #}\nC", {}),
    ("ws_plus_minus_mix", "a\n  {%+ if true -%}\n  b\n  {%- endif +%}\nc", {}),
    ("ws_var_minus_newlines", "x\n\n{{- 'y' }}\n\n{{ 'z' -}}\n\nw", {}),
    ("str_rsplit_ws", "{{ '  a b  c '.rsplit(none, 1) }} {{ ' a b c '.split(none, 1) }} {{ 'a b'.rsplit() }} {{ ' a  b '.split(none, 5) }} {{ ' '.split(none, 1) }}", {}),
    ("str_methods_unicode", "{{ 'Ärger über'.title() }} {{ 'ÉCOLE'.capitalize() }} {{ '  ü  '.strip() }} {{ 'añb'.find('b') }}", {}),
    ("loop_filter_previtem", "{% for x in [1, 2, 3, 4] if x is even %}{{ loop.previtem }}-{{ x }}-{{ loop.nextitem }};{% endfor %}", {}),
    ("dictsort_case", "{{ {'b': 1, 'A': 2, 'a': 3}|dictsort }} {{ {'b': 1, 'A': 2}|dictsort(true) }}", {}),
    ("nested_namespace_loops", "{% set ns = namespace(n=0) %}{% for a in range(3) %}{% for b in range(a) %}{% set ns.n = ns.n + 1 %}{% endfor %}{% endfor %}{{ ns.n }}", {}),
    ("set_tuple_from_list", "{% set a, b = [1, 'x'] %}{{ b }}{{ a }}", {}),
    ("if_expression_chain", "{{ 'a' if x == 1 else 'b' if x == 2 else 'c' }}", {"x": 2}),
    ("string_compare_in_list", "{{ 'user' in ['user', 'assistant'] }} {{ m.role in ['system'] }}", {"m": {"role": "system"}}),
    ("none_content", "{{ m.content }} {{ m.content is none }} {{ m.content|string }}", {"m": {"content": None}}),
    ("tojson_nested_unicode", "{{ x|tojson }} {{ x|tojson(indent='\\t') }}", {"x": {"ключ": ["值", {"emoji": "🦊"}], "n": -0.0, "big": 1234567890123456789}}),
    ("macro_kwargs_default_expr", "{% macro m(a, b=a ~ '!') %}{{ b }}{% endmacro %}{{ m('x') }}", {}),
    ("real_llama31_style_tools", LLAMA31_STYLE, {"bos_token": "<|begin_of_text|>", "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {"x": {"type": "integer"}}}}}], "documents": None, "add_generation_prompt": True, "messages": [{"role": "system", "content": " Sys "}, {"role": "user", "content": "Call f"}, {"role": "assistant", "tool_calls": [{"type": "function", "function": {"name": "f", "arguments": {"x": 1}}}]}, {"role": "tool", "content": {"result": 2}}, {"role": "tool", "content": "3"}]}),
    ("real_llama31_style_plain", LLAMA31_STYLE, {"bos_token": "<|begin_of_text|>", "tools": None, "documents": None, "add_generation_prompt": False, "messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}]}),
    ("real_mistral_style", MISTRAL_STYLE, {"bos_token": "<s>", "eos_token": "</s>", "tools": None, "documents": None, "add_generation_prompt": True, "messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "A"}, {"role": "assistant", "content": "B"}, {"role": "user", "content": "C"}]}),
    ("err_real_mistral_style_alternation", MISTRAL_STYLE, {"bos_token": "<s>", "eos_token": "</s>", "tools": None, "documents": None, "add_generation_prompt": True, "messages": [{"role": "user", "content": "A"}, {"role": "user", "content": "C"}]}),
    ("real_deepseek_style", DEEPSEEK_STYLE, {"bos_token": "<｜begin▁of▁sentence｜>", "eos_token": "<｜end▁of▁sentence｜>", "tools": None, "documents": None, "add_generation_prompt": True, "messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "Q"}, {"role": "assistant", "content": None, "tool_calls": [{"type": "function", "function": {"name": "f", "arguments": "{}"}}, {"type": "function", "function": {"name": "g", "arguments": "{}"}}]}, {"role": "tool", "content": "r1"}, {"role": "tool", "content": "r2"}, {"role": "assistant", "content": "<think>hm</think>Done"}, {"role": "user", "content": "Q2"}]}),
]


def real_template_cases():
    """The chat templates of the test tokenizer folders on conversations the goldens do not
    cover: tools, tool calls and results, reasoning, list contents, enable_thinking."""
    here = os.path.dirname(os.path.abspath(__file__))
    cases = []
    tools = [{"type": "function", "function": {"name": "get_weather", "description": "Weather \u00e0 la carte",
              "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]
    conversation = [
        {"role": "system", "content": "Use tools."},
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": "<think>\nneed tool\n</think>\n\nChecking.",
         "tool_calls": [{"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris", "days": 2}}},
                        {"function": {"name": "get_weather", "arguments": "{\"city\": \"Lyon\"}"}}]},
        {"role": "tool", "content": "{\"temp\": 21}"},
        {"role": "tool", "content": "{\"temp\": 19}"},
        {"role": "assistant", "content": "21 and 19.", "reasoning_content": "easy"},
        {"role": "user", "content": "Thanks"},
    ]
    for model in ("qwen3", "llama3", "gemma3"):
        with open(os.path.join(here, "..", "tokenizers", model, "tokenizer_config.json")) as f:
            config = json.load(f)
        specials = {k: v for k, v in config.items() if k in ("bos_token", "eos_token", "pad_token", "unk_token") and v}
        variants = [
            ("plain", {"messages": conversation[1:2] + [{"role": "assistant", "content": "Hi"}, {"role": "user", "content": "More"}]}),
            ("parts", {"messages": [{"role": "system", "content": [{"type": "text", "text": "Sys"}]},
                                    {"role": "user", "content": [{"type": "text", "text": " a "}, {"type": "image"}, {"type": "text", "text": "b"}]}]}),
        ]
        if model == "qwen3":
            variants += [
                ("tools", {"messages": conversation, "tools": tools}),
                ("no_tools", {"messages": conversation}),
                ("no_thinking", {"messages": conversation[:2], "enable_thinking": False}),
            ]
        for variant, context in variants:
            for agp in (True, False):
                ctx = {"tools": None, "documents": None, **specials, **context, "add_generation_prompt": agp}
                name = "real_%s_%s_%s" % (model, variant, "agp" if agp else "noagp")
                if model != "gemma3" and variant == "parts":
                    continue  # these templates concatenate content as a string
                cases.append((name, config["chat_template"], ctx))
    return cases


def main():
    env = make_env()
    out = []
    CASES.extend(MORE_CASES)
    CASES.extend(real_template_cases())
    for name, source, context in CASES:
        case = {"name": name, "template": source, "context": context}
        try:
            case["expected"] = env.from_string(source).render(**context)
            assert not name.startswith("err_"), name
        except jinja2.exceptions.TemplateError as e:
            if not name.startswith("err_") and name.startswith("real_"):
                case["error"] = "%s: %s" % (type(e).__name__, e)
                out.append(case)
                continue
            assert name.startswith("err_"), (name, e)
            case["error"] = "%s: %s" % (type(e).__name__, e)
        except Exception as e:  # noqa: BLE001 - recorded as the expected failure
            assert name.startswith("err_"), (name, e)
            case["error"] = "%s: %s" % (type(e).__name__, e)
        out.append(case)
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "jinja_cases.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump({"generator": "make_jinja_cases.py, jinja2 " + jinja2.__version__, "cases": out},
                  f, ensure_ascii=False, indent=1)
        f.write("\n")
    print(len(out), "cases ->", path)


if __name__ == "__main__":
    main()
