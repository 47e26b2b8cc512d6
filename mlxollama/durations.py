"""Go-style durations and Ollama's keep_alive rules (reference §4.1, B.2)."""

from __future__ import annotations

import re

NS = 1
US = 1_000
MS = 1_000_000
SECOND = 1_000_000_000
MINUTE = 60 * SECOND
HOUR = 60 * MINUTE
# Go's time.Duration maximum: Ollama shows "forever" as now + ~292 years.
FOREVER_NS = 2**63 - 1

_UNITS = {"ns": NS, "us": US, "µs": US, "μs": US, "ms": MS, "s": SECOND, "m": MINUTE, "h": HOUR}
_PART = re.compile(r"(\d+\.?\d*|\.\d+)(ns|us|µs|μs|ms|s|m|h)")


class DurationError(ValueError):
    pass


def parse_go_duration(text: str) -> int:
    """Parse a Go duration string ("5m", "1h30m", "-1.5s", "0") into nanoseconds."""
    original = text
    s = text
    sign = 1
    if s and s[0] in "+-":
        sign = -1 if s[0] == "-" else 1
        s = s[1:]
    if s == "0":
        return 0
    if not s:
        raise DurationError(f'time: invalid duration "{original}"')
    total = 0.0
    pos = 0
    while pos < len(s):
        m = _PART.match(s, pos)
        if not m:
            if re.fullmatch(r"[\d.]+", s[pos:]):
                raise DurationError(f'time: missing unit in duration "{original}"')
            unit = re.match(r"[\d.]*([^\d.]*)", s[pos:]).group(1)
            if unit and re.match(r"\d|\.", s[pos:]):
                raise DurationError(f'time: unknown unit "{unit}" in duration "{original}"')
            raise DurationError(f'time: invalid duration "{original}"')
        total += float(m.group(1)) * _UNITS[m.group(2)]
        pos = m.end()
    return sign * int(round(total))


def parse_keep_alive(value) -> int | None:
    """Request keep_alive → nanoseconds; None when absent (keep the model's current setting).

    Negative values mean forever. Raises DurationError with Ollama's message for bad input.
    """
    if value is None:
        return None
    if isinstance(value, bool):
        raise DurationError(f"Unsupported type: '{'bool'}'")
    if isinstance(value, (int, float)):
        if value != value:  # NaN: Go's decoder never lets one through
            raise DurationError("invalid keep_alive")
        # Go converts to a 64-bit Duration; anything past that is as good as forever.
        return FOREVER_NS if value < 0 or value * SECOND >= FOREVER_NS else int(value * SECOND)
    if isinstance(value, str):
        ns = parse_go_duration(value.strip())
        return FOREVER_NS if ns < 0 else ns
    raise DurationError(f"Unsupported type: '{type(value).__name__}'")


def parse_env_keep_alive(value: str | None, default_ns: int = 5 * MINUTE) -> int:
    """OLLAMA_KEEP_ALIVE is lenient: a duration string or a bare integer of seconds."""
    if value is None or not value.strip():
        return default_ns
    v = value.strip().strip("\"'")
    try:
        n = int(v)
        return FOREVER_NS if n < 0 else n * SECOND
    except ValueError:
        pass
    try:
        ns = parse_go_duration(v)
    except DurationError:
        return default_ns
    return FOREVER_NS if ns < 0 else ns
