#!/usr/bin/env python3
"""Renders every chat template in tests/fixtures/chat-templates with Python's jinja2 exactly as transformers'
apply_chat_template does (an ImmutableSandboxedEnvironment with trim_blocks, lstrip_blocks and loop controls;
transformers' tojson, raise_exception and strftime_now), for each conversation of cases.json, into expected.json:
{template: {case: {"text": ...} | {"error": ...}}}. crates/engine/tests/chat_templates_jinja2.rs renders the same
with flash-moe and compares.

Usage: python3 tools/render_chat_templates.py   (needs jinja2; strftime_now tells cases.json's fixed time, UTC)
"""
import json
import pathlib
from datetime import datetime, timezone

import jinja2
import jinja2.ext
from jinja2.sandbox import ImmutableSandboxedEnvironment

DIR = pathlib.Path(__file__).resolve().parent.parent / "tests/fixtures/chat-templates"


def environment(now_unix):
    # transformers/utils/chat_template_utils.py: _compile_jinja_template (the AssistantTracker extension only
    # matters for {% generation %} blocks, which none of these templates use).
    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    def strftime_now(fmt):
        return datetime.fromtimestamp(now_unix, tz=timezone.utc).strftime(fmt)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    return env


def render(env, source, spec, case):
    template = env.from_string(source)
    kwargs = {"bos_token": spec["bos_token"], "eos_token": spec["eos_token"]}
    if "enable_thinking" in case:
        kwargs["enable_thinking"] = case["enable_thinking"]
    tools = spec["tools"] if case.get("tools") else None
    return template.render(messages=case["messages"], tools=tools, documents=None,
                           add_generation_prompt=case["add_generation_prompt"], **kwargs)


def main():
    spec = json.loads((DIR / "cases.json").read_text())
    env = environment(spec["now_unix"])
    out = {}
    for path in sorted(DIR.glob("*.jinja")):
        source = path.read_text()
        results = {}
        for case in spec["cases"]:
            try:
                results[case["name"]] = {"text": render(env, source, spec, case)}
            except jinja2.exceptions.TemplateError as e:
                results[case["name"]] = {"error": str(e)}
        out[path.name] = results
    (DIR / "expected.json").write_text(json.dumps(out, indent=1, ensure_ascii=False) + "\n")
    n = sum(len(r) for r in out.values())
    n_err = sum("error" in v for r in out.values() for v in r.values())
    print(f"{len(out)} templates x {len(spec['cases'])} cases: {n - n_err} rendered, {n_err} refused by the template")


if __name__ == "__main__":
    main()
