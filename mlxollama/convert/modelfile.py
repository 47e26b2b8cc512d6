"""Ollama Modelfiles: the parser (parser/parser.go's state machine) and the translation of a
legacy `/api/create {"modelfile": ...}` request into the current JSON fields (§5.12.2)."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Callable

from ..options import _TYPES as OPTION_TYPES
from ..options import IGNORED_KEYS

COMMANDS = (
    "from",
    "license",
    "template",
    "system",
    "adapter",
    "draft",
    "renderer",
    "parser",
    "parameter",
    "message",
    "requires",
)
MESSAGE_ROLES = ("system", "user", "assistant")

ERR_MISSING_FROM = "no FROM line"
ERR_INVALID_ROLE = 'message role must be one of "system", "user", or "assistant"'
# A create never reads a path a client names on the server: an ADAPTER must be an uploaded blob. One
# text for every other argument, so the answer never tells whether such a path exists on the server.
ERR_ADAPTER_REFERENCE = "invalid model reference"
ERR_INVALID_COMMAND = (
    'command must be one of "from", "license", "template", "system", "adapter", "draft", '
    '"renderer", "parser", "parameter", "message", or "requires"'
)


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
    if name in MODEL_PARAMETERS:
        return value
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


# Ours, beyond Ollama: strings a model may set that are not request options. They take effect
# when the model loads (kv_cache_type: engine/kvcache.py; an unknown value there logs and uses f16).
MODEL_PARAMETERS = ("kv_cache_type",)


# Ollama's client (parser.deprecatedParameters) warns about these and leaves them out of the request.
DEPRECATED_PARAMETERS = (
    "penalize_newline",
    "low_vram",
    "f16_kv",
    "logits_all",
    "vocab_only",
    "use_mlock",
    "mirostat",
    "mirostat_tau",
    "mirostat_eta",
)


@dataclass
class ClientSide:
    """`ollama create` on the client: FROM/ADAPTER naming a local file or folder is uploaded.

    `upload(arg)` stores what `arg` names as blobs and returns {relative path: digest}, or None when
    it names nothing local (FROM then names a model). `warn` receives what Ollama's client prints.
    """

    upload: Callable[[str], dict[str, str] | None]
    warn: Callable[[str], None]


def _uploaded_blob(arg: str, filename: str) -> dict[str, str] | None:
    # `@sha256:...`: what older Ollama clients wrote for a blob they had uploaded
    return {filename: arg[1:]} if arg.startswith("@") else None


def to_create_fields(commands: list[Command], client: ClientSide | None = None) -> dict:
    """The current /api/create JSON fields a Modelfile stands for (Ollama's Modelfile.CreateRequest).

    The server (client=None) reads a legacy `modelfile` request: `FROM @sha256:…` → files, any other
    FROM → from (a model name: a path there is an invalid name, as in Ollama, and never read),
    `ADAPTER @sha256:…` → adapters, any other ADAPTER is refused (the server reads no paths a client
    names); DRAFT → draft (the name of a model in the store) and every ignored option key skipped.
    The client uploads local files instead, warns about Ollama's deprecated parameters, and refuses
    an ADAPTER that names nothing local. `stop` accumulates in both.
    """
    fields: dict = {}
    params: dict = {}
    messages: list[dict] = []
    licenses: list[str] = []
    for c in commands:
        if c.name == "model":
            files = client.upload(c.args) if client else _uploaded_blob(c.args, "model.gguf")
            if files is None:
                fields["from"] = c.args
            else:
                fields.setdefault("files", {}).update(files)
        elif c.name == "adapter":
            files = client.upload(c.args) if client else _uploaded_blob(c.args, "adapter.gguf")
            if files is not None:
                fields["adapters"] = files
            elif client:
                raise ModelfileError(f"adapter {c.args}: no such file or directory")
            else:
                raise ModelfileError(ERR_ADAPTER_REFERENCE)
        elif c.name in ("template", "system", "renderer", "parser", "requires"):
            fields[c.name] = c.args
        elif c.name == "draft":
            # A model in the store (Ollama also takes a local path, uploaded as draft_files; we do not)
            fields["draft"] = c.args
        elif c.name == "license":
            licenses.append(c.args)
        elif c.name == "message":
            role, _, content = c.args.partition(": ")
            messages.append({"role": role, "content": content})
        elif client is None and c.name in IGNORED_KEYS:
            continue
        elif client is not None and c.name in DEPRECATED_PARAMETERS:
            client.warn(f"warning: parameter {c.name} is deprecated")
        else:
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


# ------------------------------------------------------------------------------ writing Modelfiles


def quote(s: str) -> str:
    """How Ollama writes a value back into a Modelfile (parser.quote): quoted only when a bare
    value would not parse back (a newline, or a space at either end)."""
    if "\n" in s or s.startswith(" ") or s.endswith(" "):
        return f'"""{s}"""' if '"' in s else f'"{s}"'
    return s


def go_value(v) -> str:
    """A parameter value as Go's %v prints it after a JSON round trip (numbers are float64 there)."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return _go_float(float(v))
    return str(v)


def _go_float(f: float) -> str:
    # strconv.FormatFloat(f, 'g', -1, 64): shortest digits, exponent form below 1e-4 or from 1e6 on.
    if f != f:
        return "NaN"
    if f in (float("inf"), float("-inf")):
        return "+Inf" if f > 0 else "-Inf"
    if f == 0:
        return "-0" if str(f).startswith("-") else "0"
    sign, digits, exponent = Decimal(repr(f)).normalize().as_tuple()
    text = "".join(map(str, digits))
    point = len(text) + exponent  # digits before the decimal point
    minus = "-" if sign else ""
    exp = point - 1
    if exp < -4 or exp >= 6:
        mantissa = text[0] + ("." + text[1:] if len(text) > 1 else "")
        return f"{minus}{mantissa}e{'-' if exp < 0 else '+'}{abs(exp):02d}"
    if point <= 0:
        return f"{minus}0.{'0' * -point}{text}"
    if point >= len(text):
        return f"{minus}{text}{'0' * (point - len(text))}"
    return f"{minus}{text[:point]}.{text[point:]}"


def format_command(c: Command) -> str:
    """One Modelfile line, as Ollama's parser.Command.String writes it."""
    if c.name == "model":
        return f"FROM {c.args}"
    if c.name in ("license", "template", "system", "adapter", "renderer", "parser", "requires", "draft"):
        return f"{c.name.upper()} {quote(c.args)}"
    if c.name == "message":
        role, _, content = c.args.partition(": ")
        return f"MESSAGE {role} {quote(content)}"
    return f"PARAMETER {c.name} {quote(c.args)}"


def format_modelfile(commands: list[Command]) -> str:
    return "".join(format_command(c) + "\n" for c in commands)
