"""Ollama's rules for executing a model's TEMPLATE (its `template.Execute`).

A template that mentions `.Messages` runs once over the collated conversation; a legacy
`.System/.Prompt/.Response` template runs once per turn, the last turn cut after `{{ .Response }}`
so the prompt stays open for the model.
"""

from __future__ import annotations

from typing import Any

from .gotemplate import GoMap, TemplateError, parse, template_vars

__all__ = ["TemplateError", "collate", "parse", "render", "render_messages", "template_vars"]


def _message_for_template(m: dict) -> dict:
    out = dict(m)
    calls = []
    for tc in m.get("tool_calls") or []:
        fn = dict(tc.get("function") or {})
        fn["arguments"] = GoMap(fn.get("arguments") or {})
        calls.append({**tc, "function": fn})
    if calls:
        out["tool_calls"] = calls
    out.setdefault("content", "")
    return out


def _tool_for_template(tool: Any) -> Any:
    # api.Tool is a struct (field order) but its parameter properties are a Go map (sorted).
    if not isinstance(tool, dict):
        return tool
    fn = tool.get("function")
    if isinstance(fn, dict) and isinstance(fn.get("parameters"), dict):
        params = dict(fn["parameters"])
        if isinstance(params.get("properties"), dict):
            params["properties"] = GoMap(params["properties"])
        tool = {**tool, "function": {**fn, "parameters": params}}
    return tool


def collate(messages: list[dict]) -> tuple[str, list[dict]]:
    """Ollama's collate: system texts joined, consecutive same-role messages merged (not tool ones)."""
    system: list[str] = []
    merged: list[dict] = []
    for m in messages:
        m = _message_for_template(m)
        if m.get("role") == "system":
            system.append(m.get("content") or "")
        if merged and merged[-1].get("role") == m.get("role") and m.get("role") != "tool":
            merged[-1] = {
                **merged[-1],
                "content": (merged[-1].get("content") or "") + "\n\n" + (m.get("content") or ""),
            }
        else:
            merged.append(m)
    return "\n\n".join(system), merged


def render_messages(
    template: str,
    messages: list[dict],
    system: str | None = None,
    *,
    tools: list[dict] | None = None,
    think: bool | None = None,
    think_level: str = "",
    prompt: str = "",
    suffix: str = "",
) -> str:
    """Render a conversation through an Ollama Go template, as Ollama's template.Execute does.

    `system` is the model's SYSTEM text: it is put first unless the messages carry their own
    system message (Ollama's chatPrompt rule). `messages` are dicts with role, content and
    optionally tool_calls / tool_name / tool_call_id / thinking.
    """
    t = parse(template)
    msgs = list(messages)
    if system and not any(m.get("role") == "system" for m in msgs):
        msgs.insert(0, {"role": "system", "content": system})
    sys_text, collated = collate(msgs)
    base = {
        "Think": bool(think),
        "ThinkLevel": think_level or ("medium" if think is True else ""),
        "IsThinkSet": think is not None,
    }
    if prompt and suffix:
        return t.execute({"Prompt": prompt, "Suffix": suffix, "Response": "", **base})
    if t.messages_style or "document" in t.vars:
        tools_data = [_tool_for_template(t) for t in tools or []]
        return t.execute({"System": sys_text, "Messages": collated, "Tools": tools_data, "Response": "", **base})

    # Legacy: one execution per completed (system?, user, assistant) turn, the last one cut open.
    out: list[str] = []
    cur = {"system": "", "prompt": "", "response": ""}

    def execute() -> None:
        out.append(t.execute({"System": cur["system"], "Prompt": cur["prompt"], "Response": cur["response"], **base}))
        cur.update(system="", prompt="", response="")

    for m in collated:
        role, content = m.get("role"), m.get("content") or ""
        if role == "system":
            if cur["prompt"] or cur["response"]:
                execute()
            cur["system"] = content
        elif role == "user":
            if cur["response"]:
                execute()
            cur["prompt"] = content
        elif role == "assistant":
            cur["response"] = content
    data = {"System": cur["system"], "Prompt": cur["prompt"], "Response": cur["response"], **base}
    out.append(t.execute(data, t.cut_after_response()))
    return "".join(out)


def render(template: str, *, system: str = "", prompt: str = "", response: str = "", suffix: str = "") -> str:
    """Render a legacy prompt template for one turn, leaving the prompt open where .Response would be."""
    t = parse(template)
    if t.messages_style:
        return render_messages(template, [{"role": "user", "content": prompt}], system or None)
    data = {
        "System": system,
        "Prompt": prompt,
        "Response": response,
        "Suffix": suffix,
        "Messages": [],
        "Tools": [],
        "Think": False,
        "IsThinkSet": False,
    }
    return t.execute(data, t.cut_after_response())
