#!/usr/bin/python3
"""Writes tests/fixtures/chat/engine_cases.jsonl: small templates, one Jinja construct each, with
what Python's jinja2 renders for them in the environment transformers uses (reference.py's
make_environment: sandbox, trim_blocks, lstrip_blocks, loopcontrols, {% generation %}, HF's
tojson, raise_exception, strftime_now). They unit-test ftune's template engine construct by
construct; the real templates are tests/e2e/chat_template_parity_test.sh's job.

Regenerate (deterministic; Debian's python3-jinja2, 3.1.x):
    /usr/bin/python3 tests/chat/make_engine_cases.py > tests/fixtures/chat/engine_cases.jsonl

One line per case: {"name", "template", "context", "expected"} or, where jinja2 raises (at
compile or render time), {"name", "template", "context", "error": true}. The context is JSON,
so it holds no tuples and no Python objects; JSON's 1.0 is a float (prints "1.0").
Each case below says whether it must render (T) or raise (E); the generator stops if jinja2
disagrees, so a typo cannot turn a case into an unintended error.
"""

import json
import os
import sys

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from reference import make_environment  # noqa: E402

CASES = []


def T(name, template, context=None):
    CASES.append((name, template, context or {}, False))


def E(name, template, context=None):
    CASES.append((name, template, context or {}, True))


MSGS = [{"role": "system", "content": "sys"}, {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"}, {"role": "user", "content": "bye"}]
PEOPLE = [{"name": "Ann", "age": 31, "admin": True}, {"name": "bob", "age": 25, "admin": False},
          {"name": "Cy", "age": 40}]

# --- text and whitespace control --------------------------------------------------------------
T("text.plain", "Hello, world!")
T("text.trailing_newline_dropped", "Hello\n")
T("text.two_trailing_newlines", "Hello\n\n")
T("text.crlf_normalized", "a\r\nb\r\n{{ 'c' }}\r\nd")
T("text.lone_cr_normalized", "a\rb")
T("text.unicode", "日本語 ✓ 👍🏽 e\u0301")
T("ws.trim_blocks", "{% if true %}\nyes\n{% endif %}\nafter")
T("ws.trim_blocks_only_one_newline", "{% if true %}\n\nyes{% endif %}")
T("ws.trim_blocks_not_after_variable", "{{ 'x' }}\ny")
T("ws.lstrip_blocks", "start\n    {% if true %}\n    body\n    {% endif %}\nend")
T("ws.lstrip_blocks_not_mid_line", "a   {% if true %}b{% endif %}")
T("ws.lstrip_blocks_tabs", "x\n\t \t{% if true %}y{% endif %}")
T("ws.lstrip_not_for_variables", "x\n    {{ 'v' }}\n")
T("ws.plus_disables_lstrip", "x\n    {%+ if true %}y{% endif %}")
T("ws.minus_left_block", "a  \n\n  {%- if true %}b{% endif %}")
T("ws.minus_right_block", "{% if true -%}  \n\n  b{% endif %}")
T("ws.minus_both_variable", "a  \n {{- 'b' -}} \n  c")
T("ws.minus_left_variable", "a \n {{- 'b' }} c")
T("ws.minus_right_variable", "a {{ 'b' -}}\n\n c")
T("ws.minus_strips_all_whitespace_kinds", "a \t\r\n {{- 'b' -}} \t\n c")
T("ws.comment", "a{# a comment #}b")
T("ws.comment_trim_blocks", "a\n{# comment #}\nb")
T("ws.comment_lstrip", "a\n   {# comment #}\nb")
T("ws.comment_minus", "a   {#- comment -#}   b")
T("ws.comment_multiline", "a{# line1\nline2 {{ not rendered }} #}b")
T("ws.for_loop_lines", "{% for x in [1, 2, 3] %}\n  - {{ x }}\n{% endfor %}\n")
T("ws.set_line", "{% set x = 1 %}\n{{ x }}\n")
T("ws.nested_indented", "{% for x in [1, 2] %}\n    {% if x > 1 %}\n        big {{ x }}\n    {% else %}\n        small {{ x }}\n    {% endif %}\n{% endfor %}")
T("ws.minus_chain_qwen_style", "{%- if true %}\n    {{- 'A' }}\n    {%- if true %}\n        {{- 'B' + '\\n' }}\n    {%- endif %}\n{%- endif %}\n{{- 'C' }}")
T("ws.raw", "{% raw %}{{ x }} {% if %}{% endraw %}")
T("ws.raw_minus", "a  {%- raw -%}  {{ y }}  {%- endraw -%}  b")

# --- output of values ---------------------------------------------------------------------------
T("print.true_false_none", "{{ true }} {{ false }} {{ none }} {{ True }} {{ False }} {{ None }}")
T("print.int", "{{ 42 }} {{ -7 }} {{ 0 }} {{ 1_000 }}")
T("print.float_simple", "{{ 1.0 }} {{ 1.5 }} {{ -0.25 }} {{ 100.0 }}")
T("print.float_exponent", "{{ 1e-05 }} {{ 1e16 }} {{ 1.5e3 }} {{ 2.5E-7 }} {{ 123456789012345680.0 }}")
T("print.float_arith", "{{ 0.1 + 0.2 }} {{ 1 / 3 }} {{ 2 / 3 }} {{ 10 / 4 }} {{ 10 / 5 }}")
T("print.float_context", "{{ a }} {{ b }} {{ c }} {{ d }}", {"a": 1.0, "b": 2.5e-07, "c": 3, "d": 1e+100})
T("print.list", "{{ ['a', 1, 2.0, true, none] }}")
T("print.nested", "{{ {'a': [1, {'b': none}], 'c': 'd'} }}")
T("print.empty_containers", "{{ [] }} {{ {} }} {{ '' }}|")
T("print.string_repr_quotes", "{{ [\"it's\", 'say \"hi\"', 'both \\' \"'] }}")
T("print.string_repr_escapes", "{{ ['a\\nb', 'tab\\there', 'back\\\\slash'] }}")
T("print.string_repr_unicode", "{{ ['é', '日本', '👍'] }}")
T("print.string_repr_nonprintable", "{{ ['\\u200b', '\\x00', '\\x7f', '\\u00a0'] }}")
T("print.context_objects", "{{ m }} {{ l }}", {"m": {"role": "user", "n": None, "ok": True}, "l": [1.0, "x"]})
T("print.tuple", "{{ (1, 'a') }} {{ (1,) }} {{ () }}")
T("print.undefined_empty", "[{{ missing }}]")
T("print.undefined_attr_of_dict", "[{{ m.nope }}][{{ m['nope'] }}]", {"m": {"a": 1}})
T("print.none_from_context", "[{{ x }}]", {"x": None})

# --- literals -------------------------------------------------------------------------------------
T("literal.string_escapes", "{{ 'a\\nb\\tc\\\\d\\'e' }}|{{ \"q\\\"q\" }}")
T("literal.string_unicode_escape", "{{ '\\u00e9\\u65e5' }}")
T("literal.string_hex_escape", "{{ '\\x41\\x42' }}")
T("literal.double_and_single", "{{ \"it's\" }} {{ 'say \"x\"' }}")
T("literal.string_with_jinja", "{{ '{{ not }} {% a %}' }}")
T("literal.list_dict", "{{ [1, [2, 3]] | length }} {{ {'k': 'v'}['k'] }} {{ {'k': 'v'}.k }}")
T("literal.trailing_commas", "{{ [1, 2,] | length }} {{ {'a': 1,} | length }}")
T("literal.true_case_variants", "{{ true == True }} {{ none is none }}")

# --- arithmetic and operators ---------------------------------------------------------------------
T("math.basic", "{{ 1 + 2 }} {{ 5 - 7 }} {{ 3 * 4 }} {{ 7 / 2 }}")
T("math.floordiv_mod", "{{ 7 // 2 }} {{ -7 // 2 }} {{ 7 % 3 }} {{ -7 % 3 }} {{ 7.5 // 2 }}")
T("math.pow", "{{ 2 ** 10 }} {{ 2 ** -1 }} {{ 2 ** 0.5 }}")
T("math.pow_left_assoc", "{{ 2 ** 3 ** 2 }}")
T("math.unary_minus_pow", "{{ -2 ** 2 }}")
T("math.precedence", "{{ 1 + 2 * 3 }} {{ (1 + 2) * 3 }} {{ 10 - 2 - 3 }} {{ 2 * 3 % 4 }}")
T("math.int_float_mix", "{{ 1 + 1.0 }} {{ 3 * 0.5 }} {{ 4 / 2 }} {{ 2 * 2 }}")
T("math.string_repeat", "{{ 'ab' * 3 }}|{{ 2 * 'xy' }}")
T("math.list_concat", "{{ [1] + [2, 3] }}")
T("math.string_plus", "{{ 'a' + 'b' }}")
T("math.bool_arith", "{{ true + 1 }}")
E("math.string_plus_int", "{{ 'a' + 1 }}")
E("math.division_by_zero", "{{ 1 / 0 }}")
E("math.floordiv_by_zero", "{{ 1 // 0 }}")
E("math.undefined_plus", "{{ missing + 1 }}")
T("concat.tilde", "{{ 'a' ~ 1 ~ none ~ true ~ 1.5 }}")
T("concat.tilde_undefined", "[{{ 'a' ~ missing ~ 'b' }}]")
E("concat.tilde_binds_tighter_than_plus", "{{ 'a' ~ 1 + 2 }}")
T("concat.tilde_looser_than_times", "{{ 'a' ~ 2 * 3 }} {{ 1 + 2 ~ 'b' if false else ('a' ~ (1 + 2)) }}")
T("concat.tilde_list", "{{ 'x' ~ [1, 'a'] }}")
T("concat.filter_binds_tighter_than_plus", "{{ '<' + '  a  ' | trim + '>' }}")
T("concat.filter_binds_tighter_than_minus", "{{ [1, 2, 3] | length - 1 }}")

# --- comparisons and logic ------------------------------------------------------------------------
T("cmp.equality", "{{ 1 == 1 }} {{ 1 == 1.0 }} {{ '1' == 1 }} {{ 'a' != 'b' }} {{ none == none }}")
T("cmp.containers_equal", "{{ [1, 2] == [1, 2] }} {{ {'a': 1} == {'a': 1} }} {{ [1] == [1.0] }}")
T("cmp.order", "{{ 1 < 2 }} {{ 2 <= 2 }} {{ 'a' < 'b' }} {{ 'B' < 'a' }} {{ 3 > 2.5 }} {{ 2 >= 3 }}")
T("cmp.chained", "{{ 1 < 2 < 3 }} {{ 1 < 3 < 2 }}")
E("cmp.order_mixed_types", "{{ 1 < 'a' }}")
T("logic.and_or_operands", "{{ 0 or 'x' }} {{ 'a' and 'b' }} {{ '' or none }} {{ [] or 'empty' }} {{ 1 and 0 }}")
T("logic.not", "{{ not true }} {{ not '' }} {{ not [] }} {{ not none }} {{ not 0 }} {{ not 'a' }}")
T("logic.not_precedence", "{{ not 1 == 2 }} {{ not true and false }} {{ not (true and false) }}")
T("logic.not_is_defined", "{{ not x is defined }} {{ not y is defined }}", {"x": 1})
T("logic.or_and_precedence", "{{ true or false and false }} {{ (true or false) and false }}")
T("logic.short_circuit", "{{ false and missing.attr }} {{ true or missing.attr }}")
T("logic.truthiness", "{% for v in [0, 1, '', 'a', [], [0], {}, {'a': 1}, none, 0.0] %}{{ 'T' if v else 'F' }}{% endfor %}")
T("logic.undefined_falsy", "{{ 'T' if missing else 'F' }}")
T("in.string", "{{ 'b' in 'abc' }} {{ 'x' not in 'abc' }} {{ '' in 'abc' }}")
T("in.list", "{{ 2 in [1, 2] }} {{ 'a' not in ['a'] }}")
T("in.dict_keys", "{{ 'a' in {'a': 1} }} {{ 1 in {'a': 1} }}")
E("in.none", "{{ 'a' in none }}")
T("cond.if_else", "{{ 'yes' if true else 'no' }} {{ 'yes' if false else 'no' }}")
T("cond.if_without_else", "[{{ 'yes' if false }}][{{ 'yes' if true }}]")
T("cond.nested", "{{ 'a' if false else 'b' if true else 'c' }}")
T("cond.in_concat", "{{ 'x' + ('y' if true else 'z') + 'w' }}")

# --- tests (is ...) -------------------------------------------------------------------------------
T("test.defined", "{{ x is defined }} {{ y is defined }} {{ y is undefined }} {{ x is not defined }}", {"x": None})
T("test.none", "{{ none is none }} {{ x is none }} {{ 0 is none }} {{ x is not none }}", {"x": None})
T("test.string", "{{ 'a' is string }} {{ 1 is string }} {{ ['a'] is string }} {{ none is string }}")
T("test.number", "{{ 1 is number }} {{ 1.5 is number }} {{ true is number }} {{ '1' is number }}")
T("test.integer_float", "{{ 1 is integer }} {{ 1.0 is integer }} {{ 1.0 is float }} {{ 1 is float }} {{ true is integer }}")
T("test.mapping", "{{ {} is mapping }} {{ [] is mapping }} {{ m is mapping }}", {"m": {"a": 1}})
T("test.iterable", "{{ [] is iterable }} {{ 'ab' is iterable }} {{ {} is iterable }} {{ 1 is iterable }} {{ none is iterable }}")
T("test.sequence", "{{ [] is sequence }} {{ 'ab' is sequence }} {{ {} is sequence }} {{ 1 is sequence }}")
T("test.boolean_true_false", "{{ true is boolean }} {{ 1 is boolean }} {{ true is true }} {{ 1 is true }} {{ false is false }} {{ 0 is false }}")
T("test.even_odd", "{{ 2 is even }} {{ 3 is even }} {{ 3 is odd }} {{ 0 is odd }}")
T("test.divisibleby", "{{ 9 is divisibleby 3 }} {{ 10 is divisibleby(3) }}")
T("test.eq_equalto_ne", "{{ 1 is eq 1 }} {{ 'a' is equalto 'a' }} {{ 1 is ne 2 }} {{ 2 is sameas 2 }}")
T("test.gt_lt", "{{ 3 is gt 2 }} {{ 3 is lt 2 }} {{ 2 is ge 2 }} {{ 2 is le 1 }}")
T("test.lower_upper", "{{ 'abc' is lower }} {{ 'aBc' is lower }} {{ 'ABC' is upper }} {{ 'A1' is upper }}")
T("test.in", "{{ 1 is in [1, 2] }} {{ 'z' is in 'abc' }}")
T("test.false_on_context", "{{ x is false }} {{ x is defined and x is false }}", {"x": False})
T("test.precedence_with_not", "{{ not 'a' is string }} {{ 1 is not string and 2 is number }}")
E("test.unknown", "{{ 1 is nosuchtest }}")

# --- variables, attributes, subscripts ----------------------------------------------------------
T("access.attr_and_item", "{{ m.role }} {{ m['role'] }} {{ m[\"role\"] }}", {"m": {"role": "user"}})
T("access.nested", "{{ d.a.b[1].c }}", {"d": {"a": {"b": [{"c": 1}, {"c": 2}]}}})
T("access.index_negative", "{{ l[0] }} {{ l[-1] }} {{ l[-2] }}", {"l": ["x", "y", "z"]})
T("access.index_out_of_range", "[{{ l[5] }}][{{ l[-9] }}]", {"l": [1]})
T("access.string_index", "{{ 'abc'[0] }} {{ 'abc'[-1] }} [{{ 'abc'[10] }}]")
T("access.variable_key", "{% set k = 'b' %}{{ d[k] }}", {"d": {"a": 1, "b": 2}})
T("access.get", "{{ m.get('a') }} {{ m.get('zz') }} {{ m.get('zz', 'dflt') }} {{ m.get('n', 'dflt') }}", {"m": {"a": 1, "n": None}})
T("access.none_value_vs_missing", "{{ m.n is none }} {{ m.n is defined }} {{ m.zz is defined }}", {"m": {"n": None}})
T("access.key_named_like_method", "{{ m['items'] }} {{ m['keys'] }}", {"m": {"items": "I", "keys": "K"}})
E("access.attr_of_undefined", "{{ missing.attr }}")
E("access.item_of_undefined", "{{ missing['k'] }}")
E("access.attr_of_missing_key", "{{ m.nope.deeper }}", {"m": {}})
E("access.index_first_of_empty_then_attr", "{{ messages[0].role }}", {"messages": []})
E("access.call_undefined", "{{ nosuchfunction() }}")
T("slice.list", "{{ l[1:] }} {{ l[:-1] }} {{ l[::-1] }} {{ l[1:3] }} {{ l[::2] }} {{ l[-2:] }}", {"l": [1, 2, 3, 4]})
T("slice.string", "{{ s[1:] }}|{{ s[:-1] }}|{{ s[::-1] }}|{{ s[2:4] }}|{{ s[10:] }}|", {"s": "héllo"})
T("slice.empty_list", "{{ l[1:] }} {{ l[::-1] }}", {"l": []})
T("slice.messages_rest", "{% for m in messages[1:] %}{{ m.role }} {% endfor %}", {"messages": MSGS})

# --- if -------------------------------------------------------------------------------------------
T("if.elif_else", "{% for x in [1, 2, 3] %}{% if x == 1 %}one{% elif x == 2 %}two{% else %}other{% endif %} {% endfor %}")
T("if.nested", "{% if a %}{% if b %}ab{% else %}a{% endif %}{% endif %}", {"a": True, "b": False})
T("if.undefined_condition", "{% if nope %}x{% else %}y{% endif %}")
T("if.none_is_falsy", "{% if m.content %}has{% else %}empty{% endif %}", {"m": {"content": None}})

# --- for ------------------------------------------------------------------------------------------
T("for.basic", "{% for x in ['a', 'b'] %}{{ x }}{% endfor %}")
T("for.loop_index", "{% for x in 'abc' %}{{ loop.index }}{{ loop.index0 }}{{ loop.revindex }}{{ loop.revindex0 }} {% endfor %}")
T("for.loop_first_last_length", "{% for x in [1, 2, 3] %}{{ loop.first }}/{{ loop.last }}/{{ loop.length }} {% endfor %}")
T("for.previtem_nextitem", "{% for x in [1, 2, 3] %}[{{ loop.previtem }}|{{ loop.nextitem }}]{% endfor %}")
T("for.previtem_defined", "{% for x in [1, 2] %}{{ loop.previtem is defined }}{{ loop.nextitem is defined }} {% endfor %}")
T("for.cycle", "{% for x in range(5) %}{{ loop.cycle('a', 'b', 'c') }}{% endfor %}")
T("for.filter_condition", "{% for x in range(10) if x is odd %}{{ x }}:{{ loop.index }}/{{ loop.length }}{{ ',' if not loop.last }}{% endfor %}")
T("for.else_empty", "{% for x in [] %}{{ x }}{% else %}empty{% endfor %}")
T("for.else_all_filtered", "{% for x in [1, 2] if x > 5 %}{{ x }}{% else %}none left{% endfor %}")
T("for.else_after_break_in_first_iteration", "{% for x in [1, 2] %}{{ x }}{% break %}{% else %}else{% endfor %}")
T("for.else_after_break_in_later_iteration", "{% for x in [1, 2, 3] %}{{ x }}{% if x == 2 %}{% break %}{% endif %}{% else %}else{% endfor %}")
T("for.else_after_continue_every_iteration", "{% for x in [1, 2] %}{{ x }}{% continue %}{% else %}else{% endfor %}")
T("for.break", "{% for x in range(10) %}{% if x == 3 %}{% break %}{% endif %}{{ x }}{% endfor %}")
T("for.continue", "{% for x in range(6) %}{% if x is even %}{% continue %}{% endif %}{{ x }}{% endfor %}")
T("for.nested_loops", "{% for a in [1, 2] %}{% for b in 'xy' %}{{ a }}{{ b }}{{ loop.index }}{% endfor %};{{ loop.index }} {% endfor %}")
T("for.outer_loop_via_set", "{% for a in [1, 2] %}{% set outer = loop %}{% for b in [1] %}{{ outer.index }}{{ loop.index }} {% endfor %}{% endfor %}")
T("for.dict_iterates_keys", "{% for k in d %}{{ k }};{% endfor %}", {"d": {"b": 1, "a": 2}})
T("for.dict_items_unpack", "{% for k, v in d.items() %}{{ k }}={{ v }};{% endfor %}", {"d": {"b": 1, "a": 2}})
T("for.list_unpack", "{% for a, b in [[1, 2], [3, 4]] %}{{ a + b }} {% endfor %}")
T("for.string", "{% for c in 'héllo' %}{{ c }}.{% endfor %}")
T("for.undefined_iterable", "[{% for x in nope %}{{ x }}{% endfor %}]")
T("for.reversed_messages_qwen_style", "{% for m in messages[::-1] %}{{ (messages | length - 1) - loop.index0 }}{{ m.role[0] }} {% endfor %}", {"messages": MSGS})
T("for.neighbour_by_index", "{% for m in messages %}{% if not loop.first %}{{ messages[loop.index0 - 1].role }}>{% endif %}{{ m.role }} {% endfor %}", {"messages": MSGS})
T("for.loop_var_reassigned", "{% for t in calls %}{% if t.function %}{% set t = t.function %}{% endif %}{{ t.name }} {% endfor %}", {"calls": [{"function": {"name": "f"}}, {"name": "g"}]})
T("for.loop_undefined_outside", "[{{ loop }}]")
T("for.range_forms", "{{ range(3) | list }} {{ range(2, 5) | list }} {{ range(10, 0, -3) | list }} {{ range(0) | list }}")
E("for.range_zero_step", "{{ range(1, 2, 0) | list }}")

# --- set, scoping, namespace --------------------------------------------------------------------
T("set.basic", "{% set x = 'a' %}{% set y = x ~ 'b' %}{{ y }}")
T("set.tuple_unpack", "{% set a, b = 1, 2 %}{{ a }}{{ b }}")
T("set.block", "{% set body %}Hello {{ name }}!{% endset %}[{{ body }}]", {"name": "Ann"})
T("set.block_trim", "{% set body %}\n  line\n{% endset %}[{{ body }}]")
T("set.inside_for_does_not_leak", "{% set x = 'outer' %}{% for i in [1, 2] %}{% set x = i %}{{ x }}{% endfor %}{{ x }}")
T("set.inside_if_leaks", "{% if true %}{% set y = 'set in if' %}{% endif %}{{ y }}")
T("set.overrides_context", "{% set name = 'local' %}{{ name }}", {"name": "ctx"})
T("set.add_generation_prompt_default", "{% if not add_generation_prompt is defined %}{% set add_generation_prompt = false %}{% endif %}{{ add_generation_prompt }}")
T("set.llama3_style", "{% for m in messages %}{% set content = '<' + m['role'] + '>' + m['content'] | trim %}{% if loop.index0 == 0 %}{% set content = 'BOS' + content %}{% endif %}{{ content }}{% endfor %}", {"messages": [{"role": "user", "content": "  hi \n"}, {"role": "assistant", "content": "yo"}]})
T("namespace.basic", "{% set ns = namespace(count=0, seen='') %}{% for x in 'abc' %}{% set ns.count = ns.count + 1 %}{% set ns.seen = ns.seen ~ x %}{% endfor %}{{ ns.count }} {{ ns.seen }}")
T("namespace.flags", "{% set ns = namespace(found=false) %}{% for m in messages %}{% if m.role == 'assistant' %}{% set ns.found = true %}{% endif %}{% endfor %}{{ ns.found }}", {"messages": MSGS})
T("namespace.new_attribute", "{% set ns = namespace() %}{% set ns.x = 5 %}{{ ns.x }}")
T("namespace.missing_attribute", "{% set ns = namespace(a=1) %}[{{ ns.b }}]{{ ns.b is defined }}")
T("namespace.nested", "{% set inner = namespace(v='in') %}{% set ns = namespace(child=inner) %}{% set inner.v = 'changed' %}{{ ns.child.v }}")
T("namespace.expression_init", "{% set ns = namespace(last=messages | length - 1, sp='') %}{{ ns.last }}", {"messages": MSGS})
E("namespace.set_attr_on_dict", "{% set d = {} %}{% set d.x = 1 %}{{ d.x }}")

# --- macros ---------------------------------------------------------------------------------------
T("macro.defaults", "{% macro greet(name, greeting='Hello') %}{{ greeting }}, {{ name }}!{% endmacro %}{{ greet('Ann') }} {{ greet('Bob', greeting='Hi') }} {{ greet('Cy', 'Yo') }}")
T("macro.result_in_expression", "{% macro tag(x) %}<{{ x }}>{% endmacro %}{{ tag('a') | upper }}{{ tag('b') ~ '!' }}")
T("macro.missing_argument_undefined", "{% macro f(a, b) %}[{{ a }}|{{ b }}]{% endmacro %}{{ f(1) }}")
T("macro.sees_context", "{% macro who() %}{{ user }}{% endmacro %}{{ who() }}", {"user": "Ann"})
T("macro.recursive_call", "{% macro count(n) %}{{ n }}{% if n > 0 %}{{ count(n - 1) }}{% endif %}{% endmacro %}{{ count(3) }}")
T("macro.whitespace", "{% macro item(x) %}\n  - {{ x }}\n{% endmacro %}\n{{ item(1) }}{{ item(2) }}")
E("macro.too_many_arguments", "{% macro f(a) %}{{ a }}{% endmacro %}{{ f(1, 2) }}")

# --- global functions ---------------------------------------------------------------------------
E("global.raise_exception", "{{ raise_exception('roles must alternate') }}")
E("global.raise_exception_in_branch", "{% if messages[0].role != 'user' %}{{ raise_exception('bad') }}{% endif %}", {"messages": MSGS})
T("global.raise_exception_not_reached", "{% if false %}{{ raise_exception('bad') }}{% endif %}ok")
T("global.strftime_now_literal", "{{ strftime_now('literal text') }}|{{ strftime_now('%%Y') }}")
T("global.strftime_now_defined", "{{ strftime_now is defined }}")
T("generation.block", "a{% generation %}B{{ 1 + 1 }}{% endgeneration %}c")
T("generation.in_loop", "{% for m in messages %}{% if m.role == 'assistant' %}{% generation %}{{ m.content }}{% endgeneration %}{% else %}{{ m.content }}{% endif %}|{% endfor %}", {"messages": MSGS})

# --- string methods -------------------------------------------------------------------------------
T("str.strip", "[{{ '  a b \\n'.strip() }}][{{ '\\n\\nx\\n'.strip('\\n') }}][{{ 'xxaxx'.strip('x') }}][{{ 'abcba'.strip('ab') }}]")
T("str.lstrip_rstrip", "[{{ '  a  '.lstrip() }}][{{ '  a  '.rstrip() }}][{{ '\\n\\na\\n'.lstrip('\\n') }}][{{ 'a\\n\\n'.rstrip('\\n') }}]")
T("str.strip_unicode_whitespace", "[{{ '\\u3000\\u00a0 x \\u2003'.strip() }}][{{ '\\u3000 y \\u00a0' | trim }}]")
T("str.split_no_args", "{{ '  a  b\\t\\nc  '.split() }}")
T("str.split_sep", "{{ 'a,,b,'.split(',') }} {{ 'a</think>b</think>c'.split('</think>') }}")
T("str.split_maxsplit", "{{ 'a b c d'.split(' ', 1) }} {{ 'a b c'.split(none, 1) }}")
T("str.rsplit", "{{ 'a.b.c'.rsplit('.', 1) }}")
T("str.split_index", "{{ s.split('</think>')[-1].lstrip('\\n') }}|{{ s.split('</think>')[0].rstrip('\\n').split('<think>')[-1].lstrip('\\n') }}", {"s": "<think>\nreason\n</think>\n\nanswer"})
T("str.startswith_endswith", "{{ 'hello'.startswith('he') }} {{ 'hello'.endswith('lo') }} {{ 'hello'.startswith(('x', 'h')) }} {{ 'hello'.endswith(('x', 'y')) }}")
T("str.case", "{{ 'Hello wORLD'.upper() }} {{ 'Hello wORLD'.lower() }} {{ 'hello wORLD'.capitalize() }}")
T("str.title_method", "{{ \"hello wORLD's x-y\".title() }}")
T("str.case_unicode", "{{ 'straße'.upper() }} {{ 'ÉCOLE'.lower() }}")
T("str.replace", "{{ 'aaa'.replace('a', 'b') }} {{ 'aaa'.replace('a', 'b', 2) }} {{ 'abc'.replace('', '-') }}")
T("str.find_count", "{{ 'hello'.find('l') }} {{ 'hello'.find('z') }} {{ 'hello'.count('l') }} {{ 'hello'.rfind('l') }}")
T("str.join_method", "{{ ', '.join(['a', 'b', 'c']) }}")
T("str.predicates", "{{ '123'.isdigit() }} {{ 'a1'.isdigit() }} {{ 'abc'.isalpha() }} {{ '   '.isspace() }}")
E("sandbox.list_append", "{% set l = [] %}{% set _ = l.append(1) %}{{ l }}")
E("sandbox.dict_update", "{% set d = {} %}{% set _ = d.update({'a': 1}) %}{{ d }}")

# --- dict methods ---------------------------------------------------------------------------------
T("dict.items", "{% for k, v in d.items() %}{{ k }}:{{ v }} {% endfor %}", {"d": {"z": 1, "a": [2], "m": None}})
T("dict.keys_values", "{{ d.keys() | list }} {{ d.values() | list }}", {"d": {"z": 1, "a": 2}})
T("dict.length", "{{ d | length }} {{ d.items() | list | length }}", {"d": {"z": 1, "a": 2}})

# --- filters ------------------------------------------------------------------------------------
T("filter.trim", "[{{ '  a \\n' | trim }}][{{ 'xxaxx' | trim('x') }}]")
T("filter.trim_none", "[{{ none | trim }}][{{ x | trim }}]", {"x": None})
T("filter.trim_number", "[{{ 5 | trim }}]")
T("filter.length_count", "{{ 'héllo' | length }} {{ [1, 2] | length }} {{ {'a': 1} | length }} {{ [1, 2, 3] | count }} {{ nope | length }}")
T("filter.first_last", "{{ [1, 2, 3] | first }} {{ [1, 2, 3] | last }} {{ 'abc' | first }} {{ 'abc' | last }} [{{ [] | first }}]")
T("filter.join", "{{ ['a', 'b'] | join }} {{ ['a', 'b'] | join(', ') }} {{ [1, 2] | join('-') }} {{ people | join(', ', attribute='name') }}", {"people": PEOPLE})
T("filter.upper_lower", "{{ 'aBc' | upper }} {{ 'aBc' | lower }}")
T("filter.capitalize_title", "{{ 'hELLO wORLD' | capitalize }} {{ \"hello wORLD's x-y (z)\" | title }}")
T("filter.default", "{{ nope | default('d') }} {{ none | default('d') }} {{ '' | default('d') }} {{ '' | default('d', true) }} {{ 0 | d('z', boolean=true) }} {{ 'v' | d('z') }}")
T("filter.default_chain_attr", "{{ m.x | default(m.y) | default('z') }}", {"m": {"y": "Y"}})
T("filter.items", "{% for k, v in d | items %}{{ k }}={{ v }} {% endfor %}", {"d": {"b": 1, "a": 2}})
T("filter.list", "{{ 'abc' | list }} {{ (1, 2) | list }} {{ {'a': 1, 'b': 2} | list }}")
T("filter.string", "{{ 1 | string }} {{ none | string }} {{ [1, 'a'] | string }} {{ (1 | string) ~ 'x' }} {{ (1.0 | string) | length }}")
T("filter.int", "{{ '42' | int }} {{ '4.7' | int }} {{ 3.9 | int }} {{ 'x' | int }} {{ 'x' | int(5) }} {{ -3.9 | int }} {{ true | int }}")
T("filter.float", "{{ '1.5' | float }} {{ 2 | float }} {{ 'x' | float }} {{ '1e3' | float }}")
T("filter.replace", "{{ 'aaa' | replace('a', 'b') }} {{ 'aaa' | replace('a', 'b', 2) }} {{ 'a\\nb' | replace('\\n', ' ') }}")
T("filter.abs_round", "{{ -3 | abs }} {{ -2.5 | abs }} {{ 2.5 | round }} {{ 3.5 | round }} {{ 2.675 | round(2) }} {{ 2.1 | round(0, 'ceil') }} {{ 2.9 | round(method='floor') }} {{ 7 | round }}")
T("filter.sum_min_max", "{{ [1, 2, 3] | sum }} {{ [1.5, 2] | sum }} {{ people | sum(attribute='age') }} {{ [3, 1, 2] | min }} {{ [3, 1, 2] | max }} {{ ['b', 'A', 'c'] | min }} {{ ['b', 'A', 'c'] | max }}", {"people": PEOPLE})
T("filter.min_max_attribute", "{{ (people | min(attribute='age')).name }} {{ (people | max(attribute='age')).name }}", {"people": PEOPLE})
T("filter.wordcount", "{{ 'Hello, world! It is me.' | wordcount }} {{ '' | wordcount }}")
T("filter.reverse", "{{ [1, 2, 3] | reverse | list }} {{ 'abc' | reverse }}")
T("filter.sort", "{{ [3, 1, 2] | sort }} {{ ['b', 'A', 'c'] | sort }} {{ ['b', 'A', 'c'] | sort(case_sensitive=true) }} {{ [3, 1, 2] | sort(reverse=true) }}")
T("filter.sort_attribute", "{{ people | sort(attribute='age') | map(attribute='name') | join(',') }} {{ people | sort(attribute='name') | map(attribute='name') | join(',') }}", {"people": PEOPLE})
T("filter.dictsort", "{{ d | dictsort }} {{ d | dictsort(reverse=true) }} {{ d | dictsort(by='value') }}", {"d": {"b": 1, "A": 3, "c": 2}})
T("filter.unique", "{{ ['a', 'A', 'b', 'a', 1, 1] | unique | list }} {{ ['a', 'A'] | unique(case_sensitive=true) | list }}")
T("filter.selectattr", "{{ messages | selectattr('role', 'equalto', 'user') | map(attribute='content') | list }} {{ people | selectattr('admin') | map(attribute='name') | list }}", {"messages": MSGS, "people": PEOPLE})
T("filter.selectattr_tests", "{{ people | selectattr('admin', 'defined') | list | length }} {{ people | selectattr('age', 'gt', 30) | map(attribute='name') | join(',') }} {{ messages | selectattr('role', '==', 'system') | list | length }}", {"messages": MSGS, "people": PEOPLE})
T("filter.rejectattr", "{{ messages | rejectattr('role', 'equalto', 'system') | map(attribute='role') | join(',') }} {{ people | rejectattr('admin') | map(attribute='name') | join(',') }}", {"messages": MSGS, "people": PEOPLE})
T("filter.selectattr_first", "{{ (messages | selectattr('role', 'eq', 'assistant') | first).content }}", {"messages": MSGS})
T("filter.map", "{{ ['a', 'b'] | map('upper') | list }} {{ people | map(attribute='name') | list }} {{ people | map(attribute='admin', default='?') | list }} {{ ['1', '2'] | map('int') | sum }}", {"people": PEOPLE})
T("filter.select_reject", "{{ [1, 2, 3, 4] | select('odd') | list }} {{ [1, 2, 3, 4] | reject('odd') | list }} {{ [0, 1, '', 'a', none] | select | list }} {{ [1, none, 2] | reject('none') | list }} {{ [1, 5, 9] | select('gt', 4) | list }}")
T("filter.generator_printed_via_list", "{{ [1, 2] | map('string') | join('+') }}")
T("filter.safe", "{{ '<b>&</b>' | safe }} {{ '<b>' }}")
T("filter.indent", "[{{ 'a\\nb\\n\\nc' | indent(2) }}][{{ 'a\\nb' | indent(2, true) }}][{{ 'a\\n\\nb' | indent(3, blank=true) }}][{{ 'a\\nb' | indent('> ') }}]")
T("filter.center", "[{{ 'ab' | center(6) }}][{{ 'abc' | center(6) }}]")
T("filter.batch", "{{ [1, 2, 3, 4, 5] | batch(2) | list }} {{ [1, 2, 3] | batch(2, 'x') | list }}")
T("filter.chained", "{{ messages | map(attribute='role') | unique | sort | join(' ') | upper }}", {"messages": MSGS})
E("filter.unknown", "{{ 'a' | nosuchfilter }}")
T("filter.unknown_in_untaken_branch_is_fine", "{% if false %}{{ 'a' | nosuchfilter }}{% endif %}")

# --- tojson (transformers' version: json.dumps, no HTML escaping, keys in order) ---------------
T("tojson.scalars", "{{ 'a\"b' | tojson }} {{ 1 | tojson }} {{ 1.0 | tojson }} {{ 1e-07 | tojson }} {{ true | tojson }} {{ none | tojson }}")
T("tojson.unicode_not_escaped", "{{ 'é日本👍' | tojson }}")
T("tojson.html_not_escaped", "{{ '<script>&\\'' | tojson }}")
T("tojson.control_chars", "{{ 'a\\nb\\tc\\x01\\u2028' | tojson }}")
T("tojson.nested_in_order", "{{ tool | tojson }}", {"tool": {"type": "function", "function": {"name": "get_weather", "description": "Météo à Zürich", "parameters": {"type": "object", "properties": {"z": {"type": "string"}, "a": {"type": "number", "default": 1.0}}, "required": ["z"]}}}})
T("tojson.indent", "{{ d | tojson(indent=2) }}", {"d": {"b": [1, {"c": None}], "a": {}, "e": []}})
T("tojson.positional_arg_is_ensure_ascii", "{{ d | tojson(4) }}", {"d": {"k": [1, 2], "é": "日"}})
T("tojson.sort_keys", "{{ d | tojson(sort_keys=true) }}", {"d": {"b": 1, "a": {"d": 2, "c": 3}}})
T("tojson.separators", "{{ d | tojson(separators=(',', ':')) }}", {"d": {"a": [1, 2], "b": "x y"}})
T("tojson.list_of_tools", "{% for t in tools %}{{ t | tojson }}\n{% endfor %}", {"tools": [{"name": "a", "arguments": {}}, {"name": "b", "arguments": {"x": [1, "2"]}}]})
T("tojson.from_literal", "{{ {'k': [1, 'v', none, false]} | tojson }}")
T("tojson.tuple_as_list", "{{ (1, 2) | tojson }}")
E("tojson.undefined", "{{ nope | tojson }}")

# --- syntax errors ------------------------------------------------------------------------------
E("syntax.unclosed_if", "{% if true %}yes")
E("syntax.unclosed_for", "{% for x in [1] %}{{ x }}")
E("syntax.unexpected_endif", "text{% endif %}")
E("syntax.mismatched_end", "{% if true %}{% endfor %}")
E("syntax.unclosed_variable", "{{ 'a' ")
E("syntax.unclosed_string", "{{ 'abc }}")
E("syntax.empty_expression", "{{ }}")
E("syntax.dangling_operator", "{{ 1 + }}")
E("syntax.unknown_tag", "{% frobnicate %}")
E("syntax.for_without_in", "{% for x %}{% endfor %}")
E("syntax.else_twice", "{% if a %}1{% else %}2{% else %}3{% endif %}")
E("syntax.unclosed_comment", "a{# never closed")
E("syntax.unclosed_raw", "{% raw %}abc")
E("syntax.break_outside_loop", "{% break %}")
E("syntax.set_without_value", "{% set x %}")
E("syntax.unbalanced_parens", "{{ (1 + 2 }}")

# --- bits of real chat templates ------------------------------------------------------------------
T("real.qwen_think_split", "{%- set content = m.content %}{%- set reasoning = '' %}{%- if '</think>' in m.content %}{%- set content = m.content.split('</think>')[-1].lstrip('\\n') %}{%- set reasoning = m.content.split('</think>')[0].rstrip('\\n').split('<think>')[-1].lstrip('\\n') %}{%- endif %}[{{ reasoning.strip('\\n') }}][{{ content }}]", {"m": {"content": "<think>\n\nstep 1\nstep 2\n\n</think>\n\nThe answer."}})
T("real.qwen_tool_response_check", "{{ not(m.startswith('<tool_response>') and m.endswith('</tool_response>')) }}", {"m": "<tool_response>\nx\n</tool_response>"})
T("real.gemma_alternation", "{%- for message in messages[1:] -%}{%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}{{ raise_exception('alternate') }}{%- endif -%}{{ message['role'][0] }}{%- endfor -%}", {"messages": MSGS})
T("real.gemma_first_prefix", "{%- set p = messages[0]['content'] + '\\n\\n' if messages[0]['role'] == 'system' else '' -%}{%- for m in messages -%}{{ (p if loop.first else '') ~ m.role }};{%- endfor -%}", {"messages": MSGS})
T("real.content_is_string_or_list", "{%- for m in messages -%}{%- if m.content is string -%}{{ m.content }}{%- elif m.content is iterable -%}{%- for part in m.content -%}{{ part.text if part.type == 'text' else '<img>' }}{%- endfor -%}{%- endif -%}|{%- endfor -%}", {"messages": [{"content": "a"}, {"content": [{"type": "text", "text": "b"}, {"type": "image"}]}]})
T("real.deepseek_ns_system", "{% set ns = namespace(system_prompt='', is_first_sp=true) %}{%- for message in messages %}{%- if message['role'] == 'system' %}{%- if ns.is_first_sp %}{% set ns.system_prompt = ns.system_prompt + message['content'] %}{% set ns.is_first_sp = false %}{%- else %}{% set ns.system_prompt = ns.system_prompt + '\\n\\n' + message['content'] %}{%- endif %}{%- endif %}{%- endfor %}[{{ ns.system_prompt }}]", {"messages": [{"role": "system", "content": "A"}, {"role": "user", "content": "x"}, {"role": "system", "content": "B"}]})
T("real.tool_call_arguments", "{%- for tc in m.tool_calls %}{%- if tc.function %}{%- set tc = tc.function %}{%- endif %}{\"name\": \"{{ tc.name }}\", \"arguments\": {% if tc.arguments is string %}{{ tc.arguments }}{% else %}{{ tc.arguments | tojson }}{% endif %}}\n{%- endfor %}", {"m": {"tool_calls": [{"type": "function", "function": {"name": "f", "arguments": {"city": "Zürich", "n": 1.0}}}, {"type": "function", "function": {"name": "g", "arguments": "{\"raw\": true}"}}]}})
T("real.none_content_concat_trim", "{{ 'x' + m.content | trim + 'y' }}", {"m": {"content": None}})
E("real.none_content_concat", "{{ 'x' + m.content + 'y' }}", {"m": {"content": None}})
E("real.dict_concat", "{{ 'x' + m.arguments }}", {"m": {"arguments": {"a": 1}}})
E("real.in_none", "{{ '</think>' in m.content }}", {"m": {"content": None}})
T("real.enable_thinking_false", "{%- if enable_thinking is defined and enable_thinking is false %}no-think{%- else %}think{%- endif %}", {"enable_thinking": False})
T("real.bos_and_special_tokens", "{{ bos_token }}{{ messages[0]['content'] }}{{ eos_token }}", {"bos_token": "<s>", "eos_token": "</s>", "messages": [{"content": "hi"}]})
T("real.llama2_system_in_first_user", "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}{% set system_message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}{% set system_message = false %}{% endif %}{% for message in loop_messages %}{% if loop.index0 == 0 and system_message != false %}{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}{% else %}{% set content = message['content'] %}{% endif %}{% if message['role'] == 'user' %}{{ '[INST] ' + content.strip() + ' [/INST]' }}{% elif message['role'] == 'assistant' %}{{ ' ' + content.strip() + ' ' }}{% endif %}{% endfor %}", {"messages": MSGS})
T("real.date_default", "{%- if not date_string is defined %}{%- set date_string = '26 Jul 2024' %}{%- endif %}Today: {{ date_string }}")
T("real.date_given", "{%- if not date_string is defined %}{%- set date_string = '26 Jul 2024' %}{%- endif %}Today: {{ date_string }}", {"date_string": "1 Jan 2025"})
T("real.tools_none_vs_list", "{{ 'T' if tools else 'F' }}{{ tools is none }}{{ tools is not none and tools | length > 0 }}", {"tools": None})
T("real.message_keys_check", "{% for m in messages %}{{ 'tool_calls' in m }}{{ m.tool_calls is defined }}{% endfor %}", {"messages": [{"role": "assistant", "content": "", "tool_calls": []}, {"role": "user", "content": "x"}]})


def main():
    env = make_environment()
    names = set()
    for name, template, context, want_error in CASES:
        if name in names:
            sys.exit(f"duplicate case name {name}")
        names.add(name)
        try:
            text = env.from_string(template).render(**context)
            error = None
        except Exception as e:  # compile or render
            text, error = None, f"{type(e).__name__}: {e}"
        if want_error != (error is not None):
            sys.exit(f"{name}: expected {'an error' if want_error else 'a render'}, got "
                     f"{error or repr(text)}")
        row = {"name": name, "template": template, "context": context}
        if error is None:
            row["expected"] = text
        else:
            row["error"] = True
        print(json.dumps(row, ensure_ascii=False))
    print(f"{len(CASES)} cases", file=sys.stderr)


if __name__ == "__main__":
    main()
