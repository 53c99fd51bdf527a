#!/usr/bin/python3
"""Reference chat-template renderer: Python's jinja2 set up the way Hugging Face transformers'
apply_chat_template sets it up, for tests/e2e/chat_template_parity_test.sh.

    /usr/bin/python3 reference.py --tokenizer-dir DIR --cases FILE.jsonl > out.jsonl

Run it with Debian's python3 and its python3-jinja2 package (no pip, no transformers). One output
line per case, in input order: {"name": ..., "text": "..."} or {"name": ..., "error": "..."}.

What it reproduces (transformers' chat_template_utils.py and tokenization_utils_base.py):
  - an ImmutableSandboxedEnvironment with trim_blocks and lstrip_blocks, the loopcontrols
    extension and a {% generation %}...{% endgeneration %} tag that renders its body;
  - `tojson` replaced by json.dumps(x, ensure_ascii=False, indent, separators, sort_keys),
    which neither escapes HTML nor sorts keys unless asked;
  - globals raise_exception(msg) (a TemplateError) and strftime_now(fmt);
  - the template: chat_template.jinja beside tokenizer_config.json wins over the config's
    "chat_template"; a list of {name, template} picks "tool_use" when tools are given and the
    list has one, else "default";
  - the context: the tokenizer's special tokens (bos/eos/unk/sep/pad/cls/mask_token, set and
    non-empty only, an AddedToken dict giving its "content", additional_special_tokens, and the
    names in extra_special_tokens), then messages, tools, documents, add_generation_prompt and
    the case's kwargs, later keys overriding earlier ones as in
    `{**special_tokens_map, **kwargs}`. tools and documents are None when a case has none.
Case fields: name, messages, tools?, documents?, add_generation_prompt?, kwargs?.
"""

import argparse
import json
import os
import sys
from datetime import datetime

import jinja2
import jinja2.ext
import jinja2.nodes
from jinja2.exceptions import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

SPECIAL_TOKEN_ATTRIBUTES = (
    "bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")


class GenerationTag(jinja2.ext.Extension):
    """{% generation %}body{% endgeneration %}: renders the body unchanged. transformers uses the
    tag to record which characters the assistant wrote; rendering text needs only the body."""

    tags = {"generation"}

    def parse(self, parser):
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.CallBlock(
            self.call_method("_render_body"), [], [], body).set_lineno(lineno)

    @staticmethod
    def _render_body(caller):
        return caller()


def _raise_exception(message):
    raise TemplateError(message)


def _tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                      sort_keys=sort_keys)


def _strftime_now(fmt):
    return datetime.now().strftime(fmt)


def make_environment():
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True,
        extensions=[GenerationTag, jinja2.ext.loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    return env


def _token_text(value):
    """A special token as tokenizer_config.json stores it: a string or an AddedToken dict."""
    if isinstance(value, dict):
        return value.get("content")
    return value


def load_tokenizer_dir(directory):
    """Returns (templates, special_tokens): templates is None, a string, or {name: template}."""
    config_path = os.path.join(directory, "tokenizer_config.json")
    config = {}
    if os.path.exists(config_path):
        with open(config_path, encoding="utf-8") as f:
            config = json.load(f)

    templates = None
    jinja_path = os.path.join(directory, "chat_template.jinja")
    if os.path.exists(jinja_path):
        with open(jinja_path, encoding="utf-8") as f:
            templates = f.read()
    else:
        templates = config.get("chat_template")
        if isinstance(templates, list):
            templates = {entry["name"]: entry["template"] for entry in templates}

    special = {}
    names = list(SPECIAL_TOKEN_ATTRIBUTES)
    extra = config.get("extra_special_tokens")
    if isinstance(extra, dict):
        names += [name for name in extra if name not in names]
    for name in names:
        value = _token_text(config.get(name))
        if value is None and isinstance(extra, dict):
            value = _token_text(extra.get(name))
        if value:
            special[name] = value
    additional = config.get("additional_special_tokens")
    if additional:
        special["additional_special_tokens"] = [_token_text(v) for v in additional]
    return templates, special


def pick_template(templates, has_tools):
    if templates is None or templates == "" or templates == {}:
        raise ValueError("tokenizer has no chat_template (tokenizer_config.json "
                         "\"chat_template\" or chat_template.jinja)")
    if isinstance(templates, str):
        return templates
    if has_tools and "tool_use" in templates:
        return templates["tool_use"]
    if "default" in templates:
        return templates["default"]
    raise ValueError("tokenizer has several chat templates and none named 'default': "
                     + ", ".join(sorted(templates)))


def render_case(env, compiled, templates, special, case):
    tools = case.get("tools")
    key = pick_template(templates, tools is not None)
    if key not in compiled:
        compiled[key] = env.from_string(key)
    context = dict(special)
    context.update(
        messages=case["messages"],
        tools=tools,
        documents=case.get("documents"),
        add_generation_prompt=case.get("add_generation_prompt", False),
    )
    context.update(case.get("kwargs") or {})
    return compiled[key].render(**context)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokenizer-dir", required=True)
    parser.add_argument("--cases", required=True)
    args = parser.parse_args()

    templates, special = load_tokenizer_dir(args.tokenizer_dir)
    env = make_environment()
    compiled = {}
    out = sys.stdout
    with open(args.cases, encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            case = json.loads(line)
            try:
                result = {"name": case["name"],
                          "text": render_case(env, compiled, templates, special, case)}
            except Exception as e:  # every failure is a result: the other engines must fail too
                result = {"name": case["name"], "error": f"{type(e).__name__}: {e}"}
            out.write(json.dumps(result, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
