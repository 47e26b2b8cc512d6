"""The small subset of Ollama's Go templates that legacy prompt templates use.

Supports {{ .System }}, {{ .Prompt }}, {{ .Response }}, {{ .Suffix }}, `if`/`else`/`end` on those
fields, and the `{{-`/`-}}` whitespace trimming. Anything else is reported as a template error.
"""

from __future__ import annotations

import re

_ACTION = re.compile(r"\{\{(-?)\s*(.*?)\s*(-?)\}\}", re.S)
_FIELD = re.compile(r"^\.(System|Prompt|Response|Suffix)$")
_IF = re.compile(r"^if\s+\.(System|Prompt|Response|Suffix)$")


class TemplateError(ValueError):
    pass


def _tokens(template: str):
    pos = 0
    out = []
    for m in _ACTION.finditer(template):
        text = template[pos:m.start()]
        if m.group(1):
            text = text.rstrip()
        if out and out[-1][0] == "trim_next":
            out.pop()
            text = text.lstrip()
        out.append(("text", text))
        out.append(("action", m.group(2)))
        if m.group(3):
            out.append(("trim_next", ""))
        pos = m.end()
    tail = template[pos:]
    if out and out[-1][0] == "trim_next":
        out.pop()
        tail = tail.lstrip()
    out.append(("text", tail))
    return out


def _parse(tokens, i, stop=("end",)):
    nodes = []
    while i < len(tokens):
        kind, value = tokens[i]
        if kind == "text":
            nodes.append(("text", value))
            i += 1
            continue
        if value in stop and value in ("end", "else"):
            return nodes, i
        if m := _FIELD.match(value):
            nodes.append(("field", m.group(1)))
            i += 1
        elif m := _IF.match(value):
            body, i = _parse(tokens, i + 1, ("end", "else"))
            orelse = []
            if i < len(tokens) and tokens[i][1] == "else":
                orelse, i = _parse(tokens, i + 1, ("end",))
            if i >= len(tokens) or tokens[i][1] != "end":
                raise TemplateError("template: unexpected EOF")
            nodes.append(("if", m.group(1), body, orelse))
            i += 1
        else:
            raise TemplateError(f"template: unsupported action {{{{ {value} }}}}")
    if stop != ("end",) or nodes is None:
        pass
    return nodes, i


def parse(template: str):
    nodes, i = _parse(_tokens(template), 0, ())
    return nodes


def _render(nodes, values: dict) -> str:
    out = []
    for node in nodes:
        if node[0] == "text":
            out.append(node[1])
        elif node[0] == "field":
            out.append(values.get(node[1], ""))
        else:
            _, name, body, orelse = node
            out.append(_render(body if values.get(name) else orelse, values))
    return "".join(out)


def render(template: str, *, system: str = "", prompt: str = "", response: str = "", suffix: str = "") -> str:
    """Render a legacy prompt template, leaving the prompt open where .Response would be."""
    head = template.split("{{ .Response }}")[0].split("{{- .Response }}")[0].split("{{.Response}}")[0]
    nodes = parse(head)
    return _render(nodes, {"System": system, "Prompt": prompt, "Response": response, "Suffix": suffix})
