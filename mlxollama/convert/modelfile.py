"""Ollama Modelfiles: the parser (parser/parser.go's state machine) and the translation of a
legacy `/api/create {"modelfile": ...}` request into the current JSON fields (§5.12.2)."""

from __future__ import annotations

from dataclasses import dataclass

from ..options import IGNORED_KEYS, _TYPES as OPTION_TYPES

COMMANDS = ("from", "license", "template", "system", "adapter", "draft", "renderer", "parser",
            "parameter", "message", "requires")
MESSAGE_ROLES = ("system", "user", "assistant")

ERR_MISSING_FROM = "no FROM line"
ERR_INVALID_ROLE = 'message role must be one of "system", "user", or "assistant"'
ERR_INVALID_COMMAND = ('command must be one of "from", "license", "template", "system", "adapter", "draft", '
                       '"renderer", "parser", "parameter", "message", or "requires"')


class ModelfileError(ValueError):
    pass


@dataclass
class Command:
    name: str  # "model" for FROM, the parameter name for PARAMETER, else the lower-cased keyword
    args: str


def _unquote(s: str) -> tuple[str, bool]:
    if s.startswith('"""'):
        if len(s) >= 6 and s.endswith('"""'):
            return s[3:-3], True
        return "", False
    if s.startswith('"'):
        if len(s) >= 2 and s.endswith('"'):
            return s[1:-1], True
        return "", False
    return s, True


def _is_alpha(c: str) -> bool:
    return ("a" <= c <= "z") or ("A" <= c <= "Z")


def _is_space(c: str) -> bool:
    return c in " \t"


def _is_newline(c: str) -> bool:
    return c in "\r\n"


def _fail(line: int, msg: str) -> ModelfileError:
    return ModelfileError(f"(line {line}): {msg}" if line > 0 else msg)


def parse(text: str) -> list[Command]:
    """Parse Modelfile text into commands; raises ModelfileError with Ollama's wording."""
    text = text.lstrip("\ufeff")
    NIL, NAME, VALUE, PARAM, MESSAGE, COMMENT = range(6)
    state = NIL
    line = 1
    buf: list[str] = []
    role = ""
    cmd = Command("", "")
    out: list[Command] = []

    def next_state(c: str, cur: int) -> tuple[int, str, str | None]:
        if cur == NIL:
            if c == "#":
                return COMMENT, "", None
            if _is_space(c) or _is_newline(c):
                return NIL, "", None
            return NAME, c, None
        if cur == NAME:
            if _is_alpha(c):
                return NAME, c, None
            if _is_space(c):
                return VALUE, "", None
            return NIL, "", ERR_INVALID_COMMAND
        if cur == VALUE:
            if _is_newline(c) or _is_space(c):
                return NIL, c, None
            return VALUE, c, None
        if cur in (PARAM, MESSAGE):
            if _is_alpha(c) or (cur == PARAM and (c.isdigit() or c == "_")):
                return cur, c, None
            if _is_space(c):
                return VALUE, "", None
            return NIL, "", "unexpected EOF"
        if cur == COMMENT:
            return (NIL if _is_newline(c) else COMMENT), "", None
        return NIL, "", ""

    for c in text:
        if _is_newline(c):
            line += 1
        nxt, r, err = next_state(c, state)
        if err == "unexpected EOF":
            raise ModelfileError(f"unexpected EOF: {''.join(buf)}")
        if err is not None:
            raise _fail(line, err)
        if nxt != state:
            if state == NAME:
                word = "".join(buf)
                if word.lower() not in COMMANDS:
                    raise _fail(line, ERR_INVALID_COMMAND)
                low = word.lower()
                if low == "from":
                    cmd.name = "model"
                elif low == "parameter":
                    nxt = PARAM
                elif low == "message":
                    nxt = MESSAGE
                    cmd.name = low
                else:
                    cmd.name = low
            elif state == PARAM:
                cmd.name = "".join(buf)
            elif state == MESSAGE:
                word = "".join(buf)
                if word not in MESSAGE_ROLES:
                    raise _fail(line, ERR_INVALID_ROLE)
                role = word
            elif state == VALUE:
                value, ok = _unquote("".join(buf).strip())
                if not ok or _is_space(c):
                    # still inside a quoted value (or between words): the separator is part of it
                    buf.append(c)
                    continue
                if role:
                    value = f"{role}: {value}"
                    role = ""
                out.append(Command(cmd.name, value))
                cmd = Command(cmd.name, "")
            buf = []
            state = nxt
        if r and r.isprintable():
            buf.append(r)

    if state == VALUE:
        value, ok = _unquote("".join(buf).strip())
        if not ok:
            raise ModelfileError("unexpected EOF")
        if role:
            value = f"{role}: {value}"
        out.append(Command(cmd.name, value))
    elif state not in (NIL, COMMENT):
        raise ModelfileError("unexpected EOF")

    if not any(c.name == "model" for c in out):
        raise ModelfileError(ERR_MISSING_FROM)
    return out


def format_parameter(name: str, value: str):
    """Ollama's api.FormatParams for one PARAMETER line: typed by the option's Go type."""
    kind = OPTION_TYPES.get(name)
    if kind is None:
        raise ModelfileError(f"unknown parameter '{name}'")
    if kind == "array":
        return [value]
    if kind == "float32":
        try:
            return float(value)
        except ValueError:
            raise ModelfileError(f"invalid float value {value}") from None
    if kind == "integer":
        try:
            return int(value)
        except ValueError:
            raise ModelfileError(f"invalid int value {value}") from None
    if kind == "boolean":
        if value in ("1", "t", "T", "TRUE", "true", "True"):
            return True
        if value in ("0", "f", "F", "FALSE", "false", "False"):
            return False
        raise ModelfileError(f"invalid bool value {value}")
    raise ModelfileError(f"unknown type {kind} for {name}")


def to_create_fields(commands: list[Command]) -> dict:
    """The current /api/create JSON fields a Modelfile stands for.

    `FROM <name>` → from; `FROM @sha256:…` (the old CLI's uploaded blob) → files; `FROM <path>` →
    from (create resolves server-side paths); `ADAPTER @sha256:…` → adapters; `stop` accumulates.
    """
    fields: dict = {}
    params: dict = {}
    messages: list[dict] = []
    licenses: list[str] = []
    for c in commands:
        if c.name == "model":
            if c.args.startswith("@"):
                fields.setdefault("files", {})["model.gguf"] = c.args[1:]
            else:
                fields["from"] = c.args
        elif c.name == "adapter":
            if c.args.startswith("@"):
                fields["adapters"] = {"adapter.gguf": c.args[1:]}
            else:
                fields["adapter_path"] = c.args
        elif c.name in ("template", "system", "renderer", "parser", "requires"):
            fields[c.name] = c.args
        elif c.name == "draft":
            raise ModelfileError("DRAFT models are not supported")
        elif c.name == "license":
            licenses.append(c.args)
        elif c.name == "message":
            role, _, content = c.args.partition(": ")
            messages.append({"role": role, "content": content})
        else:
            if c.name in IGNORED_KEYS:
                continue
            value = format_parameter(c.name, c.args)
            if isinstance(value, list) and isinstance(params.get(c.name), list):
                params[c.name] = params[c.name] + value
            else:
                params[c.name] = value
    if params:
        fields["parameters"] = params
    if messages:
        fields["messages"] = messages
    if licenses:
        fields["license"] = licenses
    return fields


def quote(s: str) -> str:
    """How Ollama writes a value back into a Modelfile."""
    if "\n" in s or s.startswith(" ") or s.endswith(" "):
        return f'"""{s}"""' if '"' in s else f'"{s}"'
    return s
