"""Timestamps as Ollama writes them (reference §1.7)."""

from __future__ import annotations

import time
from datetime import datetime, timezone


def _trim_fraction(ns_fraction: int) -> str:
    if ns_fraction == 0:
        return ""
    return "." + f"{ns_fraction:09d}".rstrip("0")


def rfc3339_utc(ns: int | None = None) -> str:
    """created_at: UTC with Z and Go RFC3339Nano trimming."""
    ns = time.time_ns() if ns is None else ns
    secs, frac = divmod(ns, 1_000_000_000)
    base = datetime.fromtimestamp(secs, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{base}{_trim_fraction(frac)}Z"


def rfc3339_local(seconds: float) -> str:
    """modified_at / expires_at: the server's local time zone with a numeric offset."""
    ns = int(seconds * 1_000_000_000)
    secs, frac = divmod(ns, 1_000_000_000)
    try:
        dt = datetime.fromtimestamp(secs).astimezone()
    except (OverflowError, OSError, ValueError):
        # "forever" keep-alive lies beyond what the platform's time functions accept.
        dt = datetime(2318, 1, 1, tzinfo=timezone.utc).astimezone()
    base = dt.strftime("%Y-%m-%dT%H:%M:%S")
    off = dt.utcoffset()
    if not off:
        return f"{base}{_trim_fraction(frac)}Z"
    total = int(off.total_seconds())
    sign = "+" if total >= 0 else "-"
    total = abs(total)
    return f"{base}{_trim_fraction(frac)}{sign}{total // 3600:02d}:{total % 3600 // 60:02d}"
