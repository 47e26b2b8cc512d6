"""What `list`, `ps`-adjacent listings and `show` print, as the `ollama` CLI prints them."""

from __future__ import annotations

import sys
from decimal import Decimal


def digest_id(digest: str | None) -> str:
    d = (digest or "").removeprefix("sha256:")
    return d[:12]


def print_list(c, filters: list[str] | None = None) -> None:
    from .format import human_bytes, human_time, table

    rows = []
    for m in c.list().models:
        name = m.model or ""
        if filters and not name.lower().startswith(filters[0].lower()):
            continue
        rows.append([name, digest_id(m.digest), human_bytes(m.size or 0), human_time(m.modified_at, "Never")])
    sys.stdout.write(table(rows, header=["NAME", "ID", "SIZE", "MODIFIED"]))


def processor_column(size: int, vram: int) -> str:
    if vram == 0:
        return "100% CPU"
    if vram == size:
        return "100% GPU"
    if vram > size or size == 0:
        return "Unknown"
    cpu = round((size - vram) / size * 100)
    return f"{cpu}%/{100 - cpu}% CPU/GPU"


def _go_number(v) -> str:
    """A JSON number as Go prints a float64 with %g (shortest digits, exponent from 1e6 on)."""
    if isinstance(v, bool):
        return "true" if v else "false"
    d = Decimal(repr(float(v))).normalize()
    sign, digits, exp = d.as_tuple()
    if not isinstance(exp, int):  # nan/inf
        return str(v)
    ds = "".join(map(str, digits)) or "0"
    e10 = len(ds) + exp - 1
    neg = "-" if sign else ""
    if e10 < -4 or e10 >= 6:
        mant = ds[0] + ("." + ds[1:] if len(ds) > 1 else "")
        return f"{neg}{mant}e{'-' if e10 < 0 else '+'}{abs(e10):02d}"
    return neg + format(abs(d), "f")


def _go_any(v) -> str:
    if isinstance(v, str):
        return v
    if isinstance(v, (int, float)):
        return _go_number(v)
    if v is None:
        return "<nil>"
    if isinstance(v, list):
        return "[" + " ".join(_go_any(x) for x in v) + "]"
    if isinstance(v, dict):
        return "map[" + " ".join(f"{k}:{_go_any(x)}" for k, x in sorted(v.items())) + "]"
    return str(v)


def _metadata_value(v) -> str:
    if isinstance(v, list):
        from .format import text_width

        # as many items as fit in about ten columns, then a count of the rest
        shown, width = 0, 1
        for i, item in enumerate(v):
            w = text_width(_go_any(item)) + (2 if i else 0)
            if width + w > 10 and i > 0:
                break
            width += w
            shown += 1
        if shown < len(v):
            return "[" + " ".join(_go_any(x) for x in v[:shown]) + f" ...+{len(v) - shown} more]"
        return _go_any(v)
    if isinstance(v, (bool, int, float)):
        return _go_number(v)
    if isinstance(v, str):
        return v
    return type(v).__name__


def _head(text: str, n: int) -> list[list[str]]:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    rows = [["", ln] for ln in lines[:n]]
    if len(lines) > n:
        rows.append(["", "..."])
    return rows


def render_show_info(resp: dict, verbose: bool = False) -> str:
    """The sectioned report `ollama show MODEL` prints."""
    from .format import human_number, table

    out: list[str] = []

    def section(header: str, rows: list[list[str]], width: int = 30) -> None:
        out.append(f"  {header}\n")
        out.append(table(rows, col_width=width))
        out.append("\n")

    details = resp.get("details") or {}
    info = resp.get("model_info")
    rows = []
    if resp.get("remote_host"):
        rows += [["", "Remote model", resp.get("remote_model", "")], ["", "Remote URL", resp["remote_host"]]]
    if info is not None:
        arch = info.get("general.architecture")
        arch = arch if isinstance(arch, str) else ""
        if arch:
            rows.append(["", "architecture", arch])
        params = details.get("parameter_size") or ""
        if not params and isinstance(info.get("general.parameter_count"), (int, float)):
            params = human_number(int(info["general.parameter_count"]))
        if params:
            rows.append(["", "parameters", params])
        for key, label in (("context_length", "context length"), ("embedding_length", "embedding length")):
            v = info.get(f"{arch}.{key}")
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                rows.append(["", label, format(Decimal(repr(v)).normalize(), "f")])
    else:
        rows += [["", "architecture", details.get("family", "")], ["", "parameters", details.get("parameter_size", "")]]
    rows.append(["", "quantization", details.get("quantization_level", "")])
    if resp.get("requires"):
        rows.append(["", "requires", resp["requires"]])
    section("Model", rows)

    if resp.get("capabilities"):
        section("Capabilities", [["", cap] for cap in resp["capabilities"]])

    proj = resp.get("projector_info")
    if proj:
        rows = []
        arch = proj.get("general.architecture") or ""
        if arch:
            rows.append(["", "architecture", arch])
        if isinstance(proj.get("general.parameter_count"), (int, float)):
            rows.append(["", "parameters", human_number(int(proj["general.parameter_count"]))])
        for suffix, label in (("embedding_length", "embedding length"), ("projection_dim", "dimensions")):
            for modality in ("vision", "audio"):
                v = proj.get(f"{arch}.{modality}.{suffix}")
                if isinstance(v, (int, float)):
                    rows.append(["", label, _go_number(v)])
                    break
        section("Projector", rows)

    if resp.get("parameters"):
        section("Parameters", [[""] + line.split() for line in resp["parameters"].splitlines() if line])

    if info is not None and verbose:
        section("Metadata", [["", k, _metadata_value(info[k])] for k in sorted(info)])

    if resp.get("tensors") and verbose:
        section(
            "Tensors",
            [["", t.get("name", ""), t.get("type", ""), _go_any(t.get("shape", []))] for t in resp["tensors"]],
        )

    if resp.get("system"):
        section("System", _head(resp["system"], 2), width=100)
    if resp.get("license"):
        section("License", _head(resp["license"], 2), width=100)
    return "".join(out)
