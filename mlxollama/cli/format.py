"""Text formatting for the command line, matching what the `ollama` CLI prints for the same data."""

from __future__ import annotations

import math
import unicodedata
from datetime import datetime, timezone

# --- numbers, sizes, times ------------------------------------------------------------------


def human_bytes(n: int) -> str:
    """SI units, whole numbers from 10 up, one decimal below ("270 MB", "1.3 GB", "512 B")."""
    n = int(n or 0)
    for unit, scale in (("TB", 10**12), ("GB", 10**9), ("MB", 10**6), ("KB", 10**3)):
        if n >= scale:
            value = n / scale
            if value >= 10 or value == math.trunc(value):
                return f"{int(value)} {unit}"
            return f"{value:.1f} {unit}"
    return f"{n} B"


def human_number(n: int) -> str:
    """Parameter counts: 3.2B, 567.70M, 22K."""
    n = int(n)
    if n >= 10**9:
        v = n / 10**9
        return f"{v:.0f}B" if v == math.floor(v) else f"{v:.1f}B"
    if n >= 10**6:
        v = n / 10**6
        return f"{v:.0f}M" if v == math.floor(v) else f"{v:.2f}M"
    if n >= 10**3:
        return f"{n / 10**3:.0f}K"
    return str(n)


def _human_duration(seconds: float) -> str:
    s = int(seconds)
    if s < 1:
        return "Less than a second"
    if s == 1:
        return "1 second"
    if s < 60:
        return f"{s} seconds"
    minutes = int(seconds // 60)
    if minutes == 1:
        return "About a minute"
    if minutes < 60:
        return f"{minutes} minutes"
    hours = round(seconds / 3600)
    if hours == 1:
        return "About an hour"
    if hours < 48:
        return f"{hours} hours"
    if hours < 24 * 7 * 2:
        return f"{hours // 24} days"
    if hours < 24 * 30 * 2:
        return f"{hours // 24 // 7} weeks"
    if hours < 24 * 365 * 2:
        return f"{hours // 24 // 30} months"
    return f"{int(seconds // 3600) // 24 // 365} years"


def human_time(when: datetime | None, zero: str = "Never", now: datetime | None = None) -> str:
    """ "2 minutes ago", "4 minutes from now", "Forever" (more than 20 years ahead)."""
    if when is None:
        return zero
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    now = now or datetime.now(timezone.utc)
    delta = (now - when).total_seconds()
    if delta / 3600 / 24 / 365 < -20:
        return "Forever"
    if delta < 0:
        return _human_duration(-delta) + " from now"
    return _human_duration(delta) + " ago"


def go_duration(ns: int) -> str:
    """Go's time.Duration.String(): 1.234567891s, 512.3ms, 45µs, 1m2.5s."""
    ns = int(ns)
    if ns == 0:
        return "0s"
    sign = "-" if ns < 0 else ""
    u = abs(ns)
    if u < 1_000:
        return f"{sign}{u}ns"
    if u < 1_000_000:
        return sign + _frac(u, 1_000) + "µs"
    if u < 1_000_000_000:
        return sign + _frac(u, 1_000_000) + "ms"
    hours, rem = divmod(u, 3_600_000_000_000)
    minutes, rem = divmod(rem, 60_000_000_000)
    out = sign
    if hours:
        out += f"{hours}h"
    if hours or minutes:
        out += f"{minutes}m"
    return out + _frac(rem, 1_000_000_000) + "s"


def _frac(value: int, unit: int) -> str:
    whole, part = divmod(value, unit)
    if not part:
        return str(whole)
    digits = len(str(unit)) - 1
    return f"{whole}." + f"{part:0{digits}d}".rstrip("0")


def summary_lines(r) -> list[str]:
    """The timing block `ollama run --verbose` prints after an answer (Metrics.Summary)."""
    get = (lambda k: r.get(k)) if isinstance(r, dict) else (lambda k: getattr(r, k, None))
    total, load = get("total_duration") or 0, get("load_duration") or 0
    pcount, pdur = get("prompt_eval_count") or 0, get("prompt_eval_duration") or 0
    ecount, edur = get("eval_count") or 0, get("eval_duration") or 0
    lines = []
    if total > 0:
        lines.append(f"total duration:       {go_duration(total)}")
    if load > 0:
        lines.append(f"load duration:        {go_duration(load)}")
    if pcount > 0:
        lines.append(f"prompt eval count:    {pcount} token(s)")
    if pdur > 0:
        lines.append(f"prompt eval duration: {go_duration(pdur)}")
        lines.append(f"prompt eval rate:     {pcount / (pdur / 1e9):.2f} tokens/s")
    if ecount > 0:
        lines.append(f"eval count:           {ecount} token(s)")
    if edur > 0:
        lines.append(f"eval duration:        {go_duration(edur)}")
        lines.append(f"eval rate:            {ecount / (edur / 1e9):.2f} tokens/s")
    return lines


# --- tables ---------------------------------------------------------------------------------


def char_width(ch: str) -> int:
    if unicodedata.combining(ch):
        return 0
    return 2 if unicodedata.east_asian_width(ch) in ("W", "F") else 1


def text_width(s: str) -> int:
    return sum(char_width(c) for c in s)


def _wrap(cell: str, limit: int) -> list[str]:
    # Break only between words, as the Go table writer does; a long word stays whole.
    if text_width(cell) <= limit or " " not in cell:
        return [cell]
    lines, cur = [], ""
    for word in cell.split():
        if cur and text_width(cur) + 1 + text_width(word) > limit:
            lines.append(cur)
            cur = word
        else:
            cur = f"{cur} {word}" if cur else word
    lines.append(cur)
    return lines


def table(rows: list[list[str]], header: list[str] | None = None, col_width: int = 30) -> str:
    """Borderless, left-aligned columns separated (and followed) by four spaces, like `ollama list`."""
    all_rows = ([header] if header else []) + rows
    if not all_rows:
        return ""
    ncols = max(len(r) for r in all_rows)
    wrapped = []
    for r in all_rows:
        cells = [_wrap(c, col_width) for c in r] + [[""]] * (ncols - len(r))
        wrapped.append(cells)
    widths = [max(text_width(line) for cells in wrapped for line in cells[i]) for i in range(ncols)]
    out = []
    for cells in wrapped:
        height = max(len(c) for c in cells)
        for k in range(height):
            parts = []
            for i, c in enumerate(cells):
                text = c[k] if k < len(c) else ""
                parts.append(text + " " * (widths[i] - text_width(text)) + "    ")
            out.append("".join(parts))
    return "\n".join(out) + "\n"


# --- progress -------------------------------------------------------------------------------
