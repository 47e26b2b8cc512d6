"""Ollama model names: `[scheme://][host/][namespace/]model[:tag]`.

Parsing mirrors Ollama's `types/model/name.go`: right-to-left cuts, defaults
filled afterwards, and an empty side of a separator turned into a marker that
can never validate (so `foo:`, `/foo` and `a//b` are rejected rather than
silently defaulted).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

DEFAULT_HOST = "registry.ollama.ai"
DEFAULT_NAMESPACE = "library"
DEFAULT_TAG = "latest"
DEFAULT_SCHEME = "https"

# Ollama's marker for "separator present, part empty"; contains `!`, so it
# never passes validation.
_MISSING = "!MISSING!"

# First char [A-Za-z0-9_]; ASCII only (Go checks bytes, so any non-ASCII
# byte fails). Lengths are 1..350 for host and 1..80 for the rest.
_PART_RE = {
    "host": re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:-]{0,349}"),
    "namespace": re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]{0,79}"),
    "model": re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,79}"),
    "tag": re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,79}"),
}


class InvalidName(ValueError):
    """A model reference that does not follow Ollama's name grammar."""

    def __init__(self, name: object = None):
        super().__init__("invalid model name")
        self.name = name


def is_valid_part(kind: str, value: str) -> bool:
    """True if `value` is a valid `kind` part (host, namespace, model, tag)."""
    return isinstance(value, str) and _PART_RE[kind].fullmatch(value) is not None


def _cut_promised(s: str, sep: str) -> tuple[str, str, bool]:
    i = s.rfind(sep)
    if i < 0:
        return s, "", False
    return s[:i] or _MISSING, s[i + len(sep) :] or _MISSING, True


def _parse_bare(s: str) -> dict[str, str]:
    parts: dict[str, str] = {}
    # A ':' after the last '/' is the tag separator; earlier ones belong to
    # a host port (`localhost:5000/me/m`) or a scheme.
    if s.rfind(":") > s.rfind("/"):
        s, parts["tag"], _ = _cut_promised(s, ":")
    s, model, promised = _cut_promised(s, "/")
    if not promised:
        parts["model"] = s
        return parts
    parts["model"] = model
    s, namespace, promised = _cut_promised(s, "/")
    if not promised:
        parts["namespace"] = s
        return parts
    parts["namespace"] = namespace
    scheme, sep, host = s.partition("://")
    if sep:
        parts["scheme"] = scheme
    else:
        host = scheme
    parts["host"] = host
    return parts


@dataclass(frozen=True)
class ModelName:
    host: str
    namespace: str
    model: str
    tag: str
    scheme: str = DEFAULT_SCHEME

    @classmethod
    def parse(cls, s: str) -> "ModelName":
        """Parse and validate a reference; raises InvalidName."""
        if not isinstance(s, str):
            raise InvalidName(s)
        p = _parse_bare(s)
        # Like Go's cmp.Or: an empty part (not a MISSING marker) takes the default.
        n = cls(
            host=p.get("host") or DEFAULT_HOST,
            namespace=p.get("namespace") or DEFAULT_NAMESPACE,
            model=p.get("model") or "",
            tag=p.get("tag") or DEFAULT_TAG,
            scheme=p.get("scheme") or DEFAULT_SCHEME,
        )
        if not n.is_valid():
            raise InvalidName(s)
        return n

    @classmethod
    def from_parts(cls, host: str, namespace: str, model: str, tag: str, scheme: str = DEFAULT_SCHEME) -> "ModelName":
        """Build from already-split parts (e.g. a manifest path); raises InvalidName."""
        n = cls(host, namespace, model, tag, scheme)
        if not n.is_valid():
            raise InvalidName("/".join((host, namespace, model)) + ":" + tag)
        return n

    def is_valid(self) -> bool:
        return (
            is_valid_part("host", self.host)
            and is_valid_part("namespace", self.namespace)
            and is_valid_part("model", self.model)
            and is_valid_part("tag", self.tag)
        )

    @property
    def insecure(self) -> bool:
        """`http://host/...` asks pull/push to talk plain HTTP."""
        return self.scheme.lower() == "http"

    def display_shortest(self) -> str:
        if self.host.lower() != DEFAULT_HOST:
            prefix = f"{self.host}/{self.namespace}/"
        elif self.namespace.lower() != DEFAULT_NAMESPACE:
            prefix = f"{self.namespace}/"
        else:
            prefix = ""
        return f"{prefix}{self.model}:{self.tag}"

    def display_full(self) -> str:
        return f"{self.host}/{self.namespace}/{self.model}:{self.tag}"

    def manifest_parts(self) -> tuple[str, str, str, str]:
        return (self.host, self.namespace, self.model, self.tag)

    def equal_fold(self, other: "ModelName") -> bool:
        """Same model ignoring case (scheme is not part of identity)."""
        return all(a.lower() == b.lower() for a, b in zip(self.manifest_parts(), other.manifest_parts()))

    def with_parts(self, host: str, namespace: str, model: str, tag: str) -> "ModelName":
        return ModelName(host, namespace, model, tag, self.scheme)

    def __str__(self) -> str:
        return self.display_full()


def parse_name_or_none(s: str) -> ModelName | None:
    try:
        return ModelName.parse(s)
    except InvalidName:
        return None


def is_valid_name(s: str) -> bool:
    return parse_name_or_none(s) is not None
