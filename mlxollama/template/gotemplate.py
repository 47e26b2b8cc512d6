"""Ollama's prompt templates: a Go `text/template` interpreter for the subset real templates use.

Covers actions, pipelines (`|`), variables (`$x :=`, `$x =`, `$`, `$.Field`), field chains on
dicts (Go names such as `.ToolCalls` also find the JSON key `tool_calls`), parenthesised
pipelines, `if`/`else if`/`with`/`range` (`$i, $v :=`, `else`, `break`, `continue`), comments,
`{{-`/`-}}` trimming and the functions templates call: `and or not eq ne lt le gt ge len index
slice print printf println json currentDate yesterdayDate toTypeScriptType`. `define`/`template`/
`block` are refused as template errors, as is anything else this parser does not know.

How a model's conversation is fed to a template (Ollama's `template.Execute`) lives in
`template/ollama.py`.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import re
import threading
from dataclasses import dataclass, field
from typing import Any


class TemplateError(ValueError):
    pass


# --------------------------------------------------------------------------------------- lexing

_SPACE = " \t\r\n"


@dataclass
class _Tok:
    kind: str  # ident, field, var, string, number, bool, nil, dot, lparen, rparen, pipe, decl, assign, comma
    value: Any
    pos: int


def _line_of(src: str, pos: int) -> int:
    return src.count("\n", 0, pos) + 1


def _err(src: str, pos: int, msg: str) -> TemplateError:
    return TemplateError(f"template: :{_line_of(src, pos)}: {msg}")


_IDENT_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_NUMBER_RE = re.compile(r"[+-]?(0[xX][0-9a-fA-F_]+|0[bB][01_]+|0[oO][0-7_]+|(\d[\d_]*)?\.?\d[\d_]*([eE][+-]?\d+)?)")


def _lex_action(src: str, start: int, end: int) -> list[_Tok]:
    toks: list[_Tok] = []
    i = start
    while i < end:
        c = src[i]
        if c in _SPACE:
            i += 1
        elif c == "(":
            toks.append(_Tok("lparen", c, i))
            i += 1
        elif c == ")":
            toks.append(_Tok("rparen", c, i))
            i += 1
        elif c == "|":
            toks.append(_Tok("pipe", c, i))
            i += 1
        elif c == ",":
            toks.append(_Tok("comma", c, i))
            i += 1
        elif src.startswith(":=", i):
            toks.append(_Tok("decl", ":=", i))
            i += 2
        elif c == "=":
            toks.append(_Tok("assign", "=", i))
            i += 1
        elif c == '"':
            j = i + 1
            while j < end and src[j] != '"':
                if src[j] == "\\":
                    j += 1
                if src[j] == "\n":
                    raise _err(src, j, "unterminated quoted string")
                j += 1
            if j >= end:
                raise _err(src, i, "unterminated quoted string")
            try:
                value = _go_unquote(src[i + 1 : j])
            except (ValueError, IndexError) as e:
                raise _err(src, i, f"invalid syntax in string {src[i : j + 1]}") from e
            toks.append(_Tok("string", value, i))
            i = j + 1
        elif c == "`":
            j = src.find("`", i + 1, end)
            if j < 0:
                raise _err(src, i, "unterminated raw quoted string")
            toks.append(_Tok("string", src[i + 1 : j], i))
            i = j + 1
        elif c == "'":
            j = src.find("'", i + 1, end)
            if j < 0:
                raise _err(src, i, "unterminated character constant")
            body = src[i + 1 : j]
            try:
                ch = _go_unquote(body)
            except (ValueError, IndexError) as e:
                raise _err(src, i, f"malformed character constant: '{body}'") from e
            if len(ch) != 1:
                raise _err(src, i, f"malformed character constant: '{body}'")
            toks.append(_Tok("number", ord(ch), i))
            i = j + 1
        elif c == "$":
            m = _IDENT_RE.match(src, i + 1)
            name = "$" + (m.group(0) if m else "")
            j = m.end() if m else i + 1
            chain, j = _lex_chain(src, j, end)
            toks.append(_Tok("var", [name, *chain], i))
            i = j
        elif c == ".":
            if i + 1 < end and (src[i + 1].isalpha() or src[i + 1] == "_"):
                chain, j = _lex_chain(src, i, end)
                toks.append(_Tok("field", chain, i))
                i = j
            elif i + 1 < end and src[i + 1].isdigit():
                m = _NUMBER_RE.match(src, i)
                toks.append(_Tok("number", _number(src, i, m.group(0)), i))
                i = m.end()
            else:
                toks.append(_Tok("dot", ".", i))
                i += 1
        elif c.isdigit() or (c in "+-" and i + 1 < end and (src[i + 1].isdigit() or src[i + 1] == ".")):
            m = _NUMBER_RE.match(src, i)
            if not m or not m.group(0):
                raise _err(src, i, f"bad number syntax: {src[i : i + 10]!r}")
            toks.append(_Tok("number", _number(src, i, m.group(0)), i))
            i = m.end()
        elif c.isalpha() or c == "_":
            m = _IDENT_RE.match(src, i)
            word = m.group(0)
            if word in ("true", "false"):
                toks.append(_Tok("bool", word == "true", i))
            elif word == "nil":
                toks.append(_Tok("nil", None, i))
            else:
                toks.append(_Tok("ident", word, i))
            i = m.end()
        else:
            raise _err(src, i, f"unexpected {c!r} in command")
        # a field chain may follow a closing paren: (.X).Y
        if toks and toks[-1].kind == "rparen" and i < end and src[i] == "." and i + 1 < end and src[i + 1].isalpha():
            chain, i = _lex_chain(src, i, end)
            toks.append(_Tok("chain", chain, i))
    return toks


def _lex_chain(src: str, i: int, end: int) -> tuple[list[str], int]:
    chain = []
    while i < end and src[i] == ".":
        m = _IDENT_RE.match(src, i + 1)
        if not m:
            break
        chain.append(m.group(0))
        i = m.end()
    return chain, i


_ESCAPES = {"a": "\a", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v", "\\": "\\", "'": "'", '"': '"'}


def _go_unquote(body: str) -> str:
    """Go's interpreted string literal escapes (\\n, \\x41, \\101, \\u00e9, \\U0001F600)."""
    out, i = [], 0
    while i < len(body):
        c = body[i]
        if c != "\\":
            out.append(c)
            i += 1
            continue
        e = body[i + 1 : i + 2]
        if e in _ESCAPES:
            out.append(_ESCAPES[e])
            i += 2
        elif e == "x":
            out.append(chr(int(body[i + 2 : i + 4], 16)))
            i += 4
        elif e == "u":
            out.append(chr(int(body[i + 2 : i + 6], 16)))
            i += 6
        elif e == "U":
            out.append(chr(int(body[i + 2 : i + 10], 16)))
            i += 10
        elif e.isdigit():
            out.append(chr(int(body[i + 1 : i + 4], 8)))
            i += 4
        else:
            raise ValueError(f"unknown escape \\{e}")
    return "".join(out)


def _number(src: str, pos: int, text: str):
    t = text.replace("_", "")
    try:
        if re.fullmatch(r"[+-]?0[xX][0-9a-fA-F]+", t):
            return int(t, 16)
        if re.fullmatch(r"[+-]?0[bB][01]+", t):
            return int(t, 2)
        if re.fullmatch(r"[+-]?0[oO][0-7]+", t):
            return int(t, 8)
        if re.fullmatch(r"[+-]?\d+", t):
            return int(t)
        return float(t)
    except ValueError as e:
        raise _err(src, pos, f"bad number syntax: {text!r}") from e


# --------------------------------------------------------------------------------------- AST


@dataclass
class _Pipe:
    decl: list[str]  # variable names declared or assigned
    is_assign: bool
    cmds: list[list[Any]]  # each command: list of operand nodes
    pos: int


@dataclass
class _Node:
    kind: str  # text, action, if, range, with, break, continue
    pos: int = 0
    text: str = ""
    pipe: _Pipe | None = None
    body: list["_Node"] = field(default_factory=list)
    orelse: list["_Node"] = field(default_factory=list)


# operand node kinds: ("field", [names]), ("var", [name, *chain]), ("dot",), ("ident", name),
# ("lit", value), ("pipe", _Pipe, chain)

_FUNCS_ARITY = {
    "and": (1, None),
    "or": (1, None),
    "not": (1, 1),
    "len": (1, 1),
    "index": (1, None),
    "slice": (1, 4),
    "eq": (1, None),
    "ne": (2, 2),
    "lt": (2, 2),
    "le": (2, 2),
    "gt": (2, 2),
    "ge": (2, 2),
    "print": (0, None),
    "printf": (1, None),
    "println": (0, None),
    "json": (1, 1),
    "currentDate": (0, 0),
    "yesterdayDate": (0, 0),
    "toTypeScriptType": (1, 1),
    "html": (0, None),
    "js": (0, None),
    "urlquery": (0, None),
}


class _Parser:
    def __init__(self, src: str):
        self.src = src
        self.items = self._split(src)
        self.i = 0
        self.scopes: list[set[str]] = [{"$"}]

    # split into text and action items, applying trim markers
    def _split(self, src: str) -> list[tuple[str, Any, int]]:
        items: list[tuple[str, Any, int]] = []
        pos = 0
        trim_next = False
        while True:
            open_at = src.find("{{", pos)
            if open_at < 0:
                text = src[pos:]
                if trim_next:
                    text = text.lstrip(_SPACE)
                items.append(("text", text, pos))
                break
            text = src[pos:open_at]
            if trim_next:
                text = text.lstrip(_SPACE)
            inner = open_at + 2
            trim_left = src.startswith("-", inner) and inner + 1 < len(src) and src[inner + 1] in _SPACE
            if trim_left:
                text = text.rstrip(_SPACE)
                inner += 2
            items.append(("text", text, pos))
            close_at, trim_right = self._find_close(src, inner)
            body_end = close_at - 2 if trim_right else close_at
            stripped = src[inner:body_end].strip(_SPACE)
            if stripped.startswith("/*"):
                if not stripped.endswith("*/"):
                    raise _err(src, inner, "unclosed comment")
            else:
                items.append(("action", (inner, body_end), open_at))
            pos = close_at + 2
            trim_next = trim_right
        return [it for it in items if not (it[0] == "text" and it[1] == "")]

    def _find_close(self, src: str, i: int) -> tuple[int, bool]:
        n = len(src)
        stripped = src[i:].lstrip(_SPACE)
        if stripped.startswith("/*"):
            j = src.find("*/", i)
            if j < 0:
                raise _err(src, i, "unclosed comment")
            k = src.find("}}", j)
            if k < 0:
                raise _err(src, i, "unclosed action")
            return k, src[j + 2 : k].strip(_SPACE) == "-" and src[k - 1] == "-"
        while i < n:
            c = src[i]
            if c in "\"'":
                j = i + 1
                while j < n and src[j] != c:
                    j += 2 if src[j] == "\\" else 1
                i = j + 1
                continue
            if c == "`":
                j = src.find("`", i + 1)
                if j < 0:
                    raise _err(src, i, "unterminated raw quoted string")
                i = j + 1
                continue
            if src.startswith("}}", i):
                trim = i >= 2 and src[i - 1] == "-" and src[i - 2] in _SPACE
                return i, trim
            i += 1
        raise _err(src, i, "unclosed action")

    def parse(self) -> list[_Node]:
        nodes, stop = self._list(())
        if stop is not None:
            raise _err(self.src, stop[1], f"unexpected {{{{{stop[0]}}}}}")
        return nodes

    def _list(self, stops: tuple[str, ...]) -> tuple[list[_Node], tuple[str, int, list[_Tok]] | None]:
        nodes: list[_Node] = []
        while self.i < len(self.items):
            kind, value, pos = self.items[self.i]
            self.i += 1
            if kind == "text":
                nodes.append(_Node("text", pos, text=value))
                continue
            toks = _lex_action(self.src, *value)
            if not toks:
                raise _err(self.src, pos, "missing value for command")
            head = toks[0]
            word = head.value if head.kind == "ident" else None
            if word in ("end", "else"):
                if word not in stops:
                    raise _err(self.src, pos, f"unexpected {{{{{word}}}}}")
                return nodes, (word, pos, toks[1:])
            if word in ("if", "with", "range"):
                nodes.append(self._control(word, toks[1:], pos))
            elif word in ("break", "continue"):
                if len(toks) != 1:
                    raise _err(self.src, pos, f"unexpected {toks[1].value!r} in {word}")
                nodes.append(_Node(word, pos))
            elif word in ("define", "template", "block"):
                raise _err(self.src, pos, f"{{{{{word}}}}} is not supported")
            else:
                pipe = self._pipe(toks, pos)
                nodes.append(_Node("action", pos, pipe=pipe))
        if stops:
            raise _err(self.src, len(self.src), "unexpected EOF")
        return nodes, None

    def _control(self, word: str, toks: list[_Tok], pos: int) -> _Node:
        if not toks:
            raise _err(self.src, pos, f"missing value for {word}")
        self.scopes.append(set())
        pipe = self._pipe(toks, pos, allow_range_decl=(word == "range"))
        body, stop = self._list(("end", "else"))
        orelse: list[_Node] = []
        if stop and stop[0] == "else":
            rest = stop[2]
            self.scopes.pop()
            self.scopes.append(set())
            if rest and rest[0].kind == "ident" and rest[0].value in ("if", "with") and word != "range":
                # `else if` / `else with`: a nested branch that consumes the shared `end`
                orelse = [self._control(rest[0].value, rest[1:], stop[1])]
                self.scopes.pop()
                return _Node(word, pos, pipe=pipe, body=body, orelse=orelse)
            if rest:
                raise _err(self.src, stop[1], "unexpected tokens after else")
            orelse, stop = self._list(("end",))
        self.scopes.pop()
        if stop is None or stop[0] != "end":
            raise _err(self.src, pos, "unexpected EOF")
        if stop[2]:
            raise _err(self.src, stop[1], "unexpected tokens after end")
        return _Node(word, pos, pipe=pipe, body=body, orelse=orelse)

    def _declared(self, name: str) -> bool:
        return any(name in s for s in self.scopes)

    def _pipe(self, toks: list[_Tok], pos: int, allow_range_decl: bool = False) -> _Pipe:
        decl: list[str] = []
        is_assign = False
        k = 0
        # $x := ..., $i, $v := ..., $x = ...
        if toks and toks[0].kind == "var" and len(toks[0].value) == 1:
            names = [toks[0].value[0]]
            j = 1
            if allow_range_decl and j < len(toks) and toks[j].kind == "comma":
                if j + 1 < len(toks) and toks[j + 1].kind == "var" and len(toks[j + 1].value) == 1:
                    names.append(toks[j + 1].value[0])
                    j += 2
            if j < len(toks) and toks[j].kind in ("decl", "assign"):
                is_assign = toks[j].kind == "assign"
                decl = names
                k = j + 1
                if is_assign:
                    for n in names:
                        if not self._declared(n):
                            raise _err(self.src, pos, f'undefined variable "{n}"')
                else:
                    self.scopes[-1].update(names)
        cmds: list[list[Any]] = []
        current: list[Any] = []
        rest = toks[k:]
        idx = 0
        while idx < len(rest):
            t = rest[idx]
            if t.kind == "pipe":
                if not current:
                    raise _err(self.src, t.pos, "missing command")
                cmds.append(current)
                current = []
                idx += 1
                continue
            node, idx = self._operand(rest, idx)
            current.append(node)
        if not current:
            raise _err(self.src, pos, "missing value for command")
        cmds.append(current)
        for cmd in cmds[1:]:
            if cmd[0][0] != "ident":
                raise _err(self.src, pos, "non executable command in pipeline stage 2")
        return _Pipe(decl, is_assign, cmds, pos)

    def _operand(self, toks: list[_Tok], idx: int) -> tuple[Any, int]:
        t = toks[idx]
        idx += 1
        if t.kind == "field":
            node: Any = ("field", t.value)
        elif t.kind == "var":
            if not self._declared(t.value[0]):
                raise _err(self.src, t.pos, f'undefined variable "{t.value[0]}"')
            node = ("var", t.value)
        elif t.kind == "dot":
            node = ("dot",)
        elif t.kind == "ident":
            if t.value not in _FUNCS_ARITY:
                raise _err(self.src, t.pos, f'function "{t.value}" not defined')
            node = ("ident", t.value)
        elif t.kind in ("string", "number", "bool", "nil"):
            node = ("lit", t.value)
        elif t.kind == "lparen":
            depth, j = 1, idx
            while j < len(toks):
                if toks[j].kind == "lparen":
                    depth += 1
                elif toks[j].kind == "rparen":
                    depth -= 1
                    if depth == 0:
                        break
                j += 1
            if j >= len(toks):
                raise _err(self.src, t.pos, "unclosed left paren")
            inner = self._pipe(toks[idx:j], t.pos)
            idx = j + 1
            chain: list[str] = []
            if idx < len(toks) and toks[idx].kind == "chain":
                chain = toks[idx].value
                idx += 1
            node = ("pipe", inner, chain)
        else:
            raise _err(self.src, t.pos, f"unexpected {t.value!r} in operand")
        return node, idx


# --------------------------------------------------------------------------------------- values


class _GoJSON:
    """Marks dict/list values that print as JSON (Ollama's tool types have JSON String methods)."""


def _go_json(value: Any, sort_keys: bool = False) -> str:
    """encoding/json output: compact, HTML-escaped; Go maps (`GoMap`) sort their keys, struct-like
    dicts keep their field order."""
    text = json.dumps(_ordered(value, sort_keys), separators=(",", ":"), ensure_ascii=False, default=str)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _ordered(value: Any, sort_keys: bool = False) -> Any:
    if isinstance(value, dict):
        keys = sorted(value, key=str) if sort_keys or isinstance(value, GoMap) else list(value)
        return {k: _ordered(value[k]) for k in keys}
    if isinstance(value, (list, tuple)):
        return [_ordered(v) for v in value]
    return value


class GoMap(dict):
    """Tool-call arguments: a Go map, so JSON keys come out sorted."""


def _fmt_float(x: float) -> str:
    if math.isinf(x):
        return "+Inf" if x > 0 else "-Inf"
    if math.isnan(x):
        return "NaN"
    if x == int(x) and abs(x) < 1e21:
        return str(int(x))
    s = repr(x)
    if "e" in s:
        mant, exp = s.split("e")
        sign = "-" if exp.startswith("-") else "+"
        return f"{mant}e{sign}{abs(int(exp)):02d}"
    return s


def _to_text(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, str):
        return v
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return _fmt_float(v)
    if isinstance(v, (dict, list, tuple)):
        return _go_json(v)
    return str(v)


def _truth(v: Any) -> bool:
    if v is None:
        return False
    if isinstance(v, bool):
        return v
    if isinstance(v, (int, float)):
        return v != 0
    if isinstance(v, (str, list, tuple, dict)):
        return len(v) > 0
    return True


_CAMEL = re.compile(r"[A-Z]+(?=[A-Z][a-z]|[0-9]|$)|[A-Z]?[a-z0-9]+|[A-Z]+")


def _field(obj: Any, name: str) -> Any:
    if obj is None:
        return None
    if isinstance(obj, dict):
        if name in obj:
            return obj[name]
        snake = "_".join(w.lower() for w in _CAMEL.findall(name))
        for key in (snake, name[:1].lower() + name[1:], name.lower()):
            if key in obj:
                return obj[key]
        low = name.lower().replace("_", "")
        for k, v in obj.items():
            if isinstance(k, str) and k.lower().replace("_", "") == low:
                return v
        return None
    # Go evaluates fields of maps and structs only; a Python attribute (`.Prompt.upper`) is no field.
    raise TemplateError(f"can't evaluate field {name} in type {_go_type(obj)}")


class _Break(Exception):
    pass


class _Continue(Exception):
    pass


def _cmp_key(a: Any, b: Any) -> tuple[Any, Any]:
    if (
        isinstance(a, (int, float))
        and isinstance(b, (int, float))
        and not isinstance(a, bool)
        and not isinstance(b, bool)
    ):
        return a, b
    if type(a) is not type(b):
        raise TemplateError(f"incompatible types for comparison: {_go_type(a)} and {_go_type(b)}")
    return a, b


def _go_type(v: Any) -> str:
    return {str: "string", bool: "bool", int: "int", float: "float64", list: "slice", dict: "map"}.get(
        type(v), type(v).__name__
    )


_TS_TYPES = {"string": "string", "integer": "number", "number": "number", "boolean": "boolean", "null": "null"}


def _ts_type(prop: Any) -> str:
    """Ollama's toTypeScriptType: a JSON-schema property as a TypeScript type."""
    if not isinstance(prop, dict):
        return "any"
    if prop.get("enum"):
        return " | ".join(json.dumps(e) for e in prop["enum"])
    t = prop.get("type")
    types = t if isinstance(t, list) else [t]
    out = []
    for one in types:
        if one == "array":
            items = prop.get("items")
            out.append(f"{_ts_type(items) if items else 'any'}[]")
        elif one == "object":
            out.append("object")
        else:
            out.append(_TS_TYPES.get(one, "any"))
    return " | ".join(out) if out else "any"


def _printf(fmt: str, *args: Any) -> str:
    out = []
    it = iter(args)
    i = 0
    while i < len(fmt):
        c = fmt[i]
        if c != "%" or i + 1 >= len(fmt):
            out.append(c)
            i += 1
            continue
        verb = fmt[i + 1]
        i += 2
        if verb == "%":
            out.append("%")
            continue
        try:
            arg = next(it)
        except StopIteration:
            out.append(f"%!{verb}(MISSING)")
            continue
        if verb == "q":
            out.append(json.dumps(_to_text(arg), ensure_ascii=False))
        elif verb == "d":
            out.append(str(int(arg)))
        elif verb == "f":
            out.append(f"{float(arg):f}")
        else:
            out.append(_to_text(arg))
    return "".join(out)


# Bounds on one execution, so a hostile per-request template (`{{ range 4000 }}` nested) ends in a
# template error instead of holding a thread for minutes: far above what real chat templates use
# over a long conversation with tools.
MAX_STEPS = 2_000_000
MAX_OUTPUT_CHARS = 64 << 20


class _Exec:
    def __init__(self, src: str, data: Any):
        self.src = src
        self.out: list[str] = []
        self.vars: list[dict[str, Any]] = [{"$": data}]
        self.steps = 0
        self.size = 0

    def _count(self, text: str = "") -> None:
        self.steps += 1
        self.size += len(text)
        if self.steps > MAX_STEPS or self.size > MAX_OUTPUT_CHARS:
            raise TemplateError("template execution exceeded its limit")

    def lookup(self, name: str) -> Any:
        for scope in reversed(self.vars):
            if name in scope:
                return scope[name]
        raise TemplateError(f'undefined variable "{name}"')

    def assign(self, name: str, value: Any) -> None:
        for scope in reversed(self.vars):
            if name in scope:
                scope[name] = value
                return
        raise TemplateError(f'undefined variable "{name}"')

    def run(self, nodes: list[_Node], dot: Any) -> None:
        for node in nodes:
            k = node.kind
            if k == "text":
                self._count(node.text)
                self.out.append(node.text)
            elif k == "action":
                value = self.pipe(node.pipe, dot)
                if not node.pipe.decl:
                    text = _to_text(value)
                    self._count(text)
                    self.out.append(text)
                else:
                    self._count()
            elif k == "if":
                self.vars.append({})
                try:
                    cond = _truth(self.pipe(node.pipe, dot))
                    self.run(node.body if cond else node.orelse, dot)
                finally:
                    self.vars.pop()
            elif k == "with":
                self.vars.append({})
                try:
                    value = self.pipe(node.pipe, dot)
                    if _truth(value):
                        self.run(node.body, value)
                    else:
                        self.run(node.orelse, dot)
                finally:
                    self.vars.pop()
            elif k == "range":
                self.range(node, dot)
            elif k == "break":
                raise _Break()
            elif k == "continue":
                raise _Continue()

    def range(self, node: _Node, dot: Any) -> None:
        pipe = node.pipe
        self.vars.append({})
        try:
            value = self.pipe(_Pipe([], False, pipe.cmds, pipe.pos), dot)
            if value is None:
                items: list[tuple[Any, Any]] = []
            elif isinstance(value, dict):
                items = [(k, value[k]) for k in sorted(value, key=lambda x: (str(type(x)), x))]
            elif isinstance(value, (list, tuple)):
                items = list(enumerate(value))
            elif isinstance(value, int) and not isinstance(value, bool):
                items = [(i, i) for i in range(value)]
            elif isinstance(value, str):
                raise TemplateError(f"range can't iterate over {value}")
            else:
                items = list(enumerate(value))
            if not items:
                self.run(node.orelse, dot)
                return
            for key, elem in items:
                self._count()
                scope = self.vars[-1]
                scope.clear()
                if len(pipe.decl) == 1:
                    scope[pipe.decl[0]] = elem
                elif len(pipe.decl) == 2:
                    scope[pipe.decl[0]] = key
                    scope[pipe.decl[1]] = elem
                try:
                    self.vars.append({})
                    try:
                        self.run(node.body, elem)
                    finally:
                        self.vars.pop()
                except _Continue:
                    continue
                except _Break:
                    break
        finally:
            self.vars.pop()

    def pipe(self, pipe: _Pipe, dot: Any) -> Any:
        value: Any = _NOARG
        for cmd in pipe.cmds:
            value = self.command(cmd, dot, value)
        if pipe.decl:
            if pipe.is_assign:
                self.assign(pipe.decl[0], value)
            else:
                self.vars[-1][pipe.decl[0]] = value
        return value

    def command(self, cmd: list[Any], dot: Any, piped: Any) -> Any:
        head = cmd[0]
        if head[0] == "ident":
            return self.call(head[1], cmd[1:], dot, piped)
        if len(cmd) > 1:
            raise TemplateError(f"can't give argument to non-function {self._describe(head)}")
        if piped is not _NOARG:
            raise TemplateError(f"can't give argument to non-function {self._describe(head)}")
        return self.operand(head, dot)

    @staticmethod
    def _describe(node: Any) -> str:
        if node[0] == "field":
            return "." + ".".join(node[1])
        if node[0] == "var":
            return ".".join(node[1])
        return repr(node[1]) if node[0] == "lit" else node[0]

    def operand(self, node: Any, dot: Any) -> Any:
        kind = node[0]
        if kind == "field":
            value = dot
            for name in node[1]:
                value = _field(value, name)
            return value
        if kind == "var":
            value = self.lookup(node[1][0])
            for name in node[1][1:]:
                value = _field(value, name)
            return value
        if kind == "dot":
            return dot
        if kind == "lit":
            return node[1]
        if kind == "pipe":
            value = self.pipe(node[1], dot)
            for name in node[2]:
                value = _field(value, name)
            return value
        if kind == "ident":
            return self.call(node[1], [], dot, _NOARG)
        raise TemplateError(f"unexpected operand {kind}")

    def call(self, name: str, arg_nodes: list[Any], dot: Any, piped: Any) -> Any:
        lo, hi = _FUNCS_ARITY[name]
        n = len(arg_nodes) + (0 if piped is _NOARG else 1)
        if n < lo or (hi is not None and n > hi):
            raise TemplateError(f"wrong number of args for {name}: want {lo if hi == lo else f'at least {lo}'} got {n}")
        if name in ("and", "or"):
            # short-circuit like Go >= 1.18
            value = None
            for i, a in enumerate(arg_nodes):
                value = self.operand(a, dot)
                if _truth(value) != (name == "and"):
                    return value
            if piped is not _NOARG:
                value = piped
            return value
        args = [self.operand(a, dot) for a in arg_nodes]
        if piped is not _NOARG:
            args.append(piped)
        return _call(name, args)


_NOARG = object()


def _call(name: str, args: list[Any]) -> Any:
    if name == "not":
        return not _truth(args[0])
    if name == "len":
        v = args[0]
        if v is None:
            return 0
        if isinstance(v, (str, list, tuple, dict)):
            return len(v.encode() if isinstance(v, str) else v)
        raise TemplateError(f"len of type {_go_type(v)}")
    if name == "index":
        v = args[0]
        for i in args[1:]:
            if v is None:
                raise TemplateError("index of untyped nil")
            try:
                v = v[i] if isinstance(v, (list, tuple, str)) else v.get(i)
            except (IndexError, TypeError) as e:
                raise TemplateError(f"error calling index: index out of range: {i}") from e
        return v
    if name == "slice":
        v = args[0]
        idx = [int(a) for a in args[1:]]
        if v is None:
            raise TemplateError("slice of untyped nil")
        if len(idx) == 0:
            return v
        lo = idx[0]
        hi = idx[1] if len(idx) > 1 else len(v)
        if not 0 <= lo <= hi <= len(v):
            raise TemplateError(f"error calling slice: index out of range: {hi}")
        return v[lo:hi]
    if name == "eq":
        a = args[0]
        if len(args) == 1:
            raise TemplateError("missing argument for comparison")
        for b in args[1:]:
            if a is None or b is None:
                if a is b:
                    return True
                continue
            x, y = _cmp_key(a, b)
            if x == y:
                return True
        return False
    if name == "ne":
        if args[0] is None or args[1] is None:
            return args[0] is not args[1]
        x, y = _cmp_key(args[0], args[1])
        return x != y
    if name in ("lt", "le", "gt", "ge"):
        x, y = _cmp_key(args[0], args[1])
        try:
            return {"lt": x < y, "le": x <= y, "gt": x > y, "ge": x >= y}[name]
        except TypeError as e:
            raise TemplateError(f"invalid type for comparison: {_go_type(x)}") from e
    if name == "print":
        # Go adds spaces between operands when neither is a string
        out = []
        for i, a in enumerate(args):
            if i and not isinstance(a, str) and not isinstance(args[i - 1], str):
                out.append(" ")
            out.append(_to_text(a))
        return "".join(out)
    if name == "println":
        return " ".join(_to_text(a) for a in args) + "\n"
    if name == "printf":
        return _printf(_to_text(args[0]), *args[1:])
    if name == "json":
        return _go_json(args[0])
    if name == "currentDate":
        return _dt.date.today().isoformat()
    if name == "yesterdayDate":
        return (_dt.date.today() - _dt.timedelta(days=1)).isoformat()
    if name == "toTypeScriptType":
        return _ts_type(args[0])
    if name in ("html", "js", "urlquery"):
        return "".join(_to_text(a) for a in args)
    raise TemplateError(f'function "{name}" not defined')


# --------------------------------------------------------------------------------------- public API


class Template:
    """A parsed template; `vars` are the lower-cased identifiers it mentions (Ollama's Vars())."""

    def __init__(self, source: str):
        self.source = source
        self.nodes = _Parser(source).parse()
        self.vars = sorted({v.lower() for v in _identifiers(self.nodes)})
        if "messages" not in self.vars and "response" not in self.vars:
            # Ollama appends {{ .Response }} to templates that have neither.
            self.nodes = [
                *self.nodes,
                _Node("action", len(source), pipe=_Pipe([], False, [[("field", ["Response"])]], len(source))),
            ]
            self.vars = sorted({*self.vars, "response"})

    @property
    def messages_style(self) -> bool:
        return "messages" in self.vars

    def execute(self, data: dict, nodes: list[_Node] | None = None) -> str:
        ex = _Exec(self.source, data)
        try:
            ex.run(self.nodes if nodes is None else nodes, data)
        except (_Break, _Continue) as e:
            raise TemplateError("break or continue outside range") from e
        except TemplateError as e:
            msg = str(e)
            raise TemplateError(msg if msg.startswith("template:") else f"template: :{1}: executing: {msg}") from e
        except (TypeError, ValueError, KeyError, AttributeError) as e:
            raise TemplateError(f"template: executing: {e}") from e
        except RecursionError as e:
            raise TemplateError("template: executing: nested too deeply") from e
        return "".join(ex.out)

    def cut_after_response(self) -> list[_Node]:
        """The tree with everything after the first `.Response` field removed (Ollama's deleteNode)."""
        state = {"cut": False}

        def walk_list(nodes: list[_Node]) -> list[_Node]:
            out = []
            for n in nodes:
                kept = walk(n)
                if kept is not None:
                    out.append(kept)
            return out

        def walk(n: _Node) -> _Node | None:
            if state["cut"]:
                return None
            if n.kind == "action":
                if any(arg[0] == "field" and "Response" in arg[1] for cmd in n.pipe.cmds for arg in cmd):
                    state["cut"] = True
                return n
            if n.kind in ("if", "with", "range"):
                body = walk_list(n.body)
                orelse = walk_list(n.orelse) if not state["cut"] else []
                return _Node(n.kind, n.pos, pipe=n.pipe, body=body, orelse=orelse)
            return n

        return walk_list(self.nodes)


def _identifiers(nodes: list[_Node]) -> list[str]:
    out: list[str] = []

    def pipe_idents(p: _Pipe) -> None:
        for cmd in p.cmds:
            for arg in cmd:
                if arg[0] in ("field", "var"):
                    out.extend(arg[1])
                elif arg[0] == "pipe":
                    pipe_idents(arg[1])

    def walk(ns: list[_Node]) -> None:
        for n in ns:
            if n.pipe is not None:
                pipe_idents(n.pipe)
            walk(n.body)
            walk(n.orelse)

    walk(nodes)
    return out


_CACHE: dict[str, Template] = {}
_CACHE_LOCK = threading.Lock()  # templates are parsed on model threads and worker threads at once


def parse(template: str) -> Template:
    """Parse (cached); raises TemplateError with Go-like wording."""
    with _CACHE_LOCK:
        t = _CACHE.get(template)
    if t is None:
        try:
            t = Template(template)
        except RecursionError as e:
            raise TemplateError("template: nested too deeply") from e
        with _CACHE_LOCK:
            if len(_CACHE) > 64:
                _CACHE.clear()
            _CACHE[template] = t
    return t


def template_vars(template: str) -> list[str]:
    return parse(template).vars
