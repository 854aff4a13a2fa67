"""The report's tables as plain strings, shared by the Markdown, HTML and terminal views.

Two layouts:

* **one device** (``edgekit bench``, ``edgekit matrix``): a line per artifact with
  status, size, parity of the final stage, p50/p90 and speed-up over torch eager;
* **per device** (``edgekit report merge``): a line per (model, target, precision)
  and a latency column per device.
"""
from __future__ import annotations

import math
from typing import Any

from .schema import cell_key, device_ids

STATUS_TEXT = {"ok": "ok", "parity-fail": "PARITY FAIL", "error": "ERROR", "skipped": "skipped"}


def num(x: Any, digits: int = 3) -> str:
    if x is None:
        return "—"
    if isinstance(x, str):
        return x
    if isinstance(x, float) and not math.isfinite(x):
        return "inf" if x > 0 else "nan"
    if x != 0 and (abs(x) < 10 ** -(digits) or abs(x) >= 1e5):
        return f"{x:.2e}"
    return f"{x:.{digits}g}" if abs(x) < 10 ** digits else f"{x:.0f}"


def ms(x: Any) -> str:
    if x is None:
        return "—"
    return f"{x:.3f}" if x < 1 else f"{x:.2f}" if x < 100 else f"{x:.0f}"


def pct(x: Any) -> str:
    return "—" if x is None else f"{x:.1%}"


def cos(x: Any) -> str:
    if x is None:
        return "—"
    return f"{x:.6f}" if x < 0.999999 else f"{x:.7f}"


def speed(x: Any) -> str:
    return "—" if x is None else f"{x:.2f}×"


def _notes(row: dict[str, Any], limit: int = 160) -> str:
    parts = []
    if row.get("error"):
        parts.append(str(row["error"]))
    par = row.get("parity") or {}
    yard = par.get("reference_stability") or {}
    if yard.get("top1") is not None:  # before the failures, which the Checks section repeats in full
        sqnr = "∞" if yard.get("sqnr_db") is None else f"{yard['sqnr_db']:.1f}"
        parts.append(f"yardstick (FP32 ±{yard.get('amplitude_steps', 0.5):g} px): {yard['top1']:.1%} top-1, {sqnr} dB")
    if row["status"] == "parity-fail" and par.get("failures"):
        parts.append("; ".join(par["failures"][:3]))
    paired = row.get("paired") or {}
    if "int8-slower-than-fp32" in (row.get("flags") or []):
        parts.append("⚠ INT8 slower than FP32" + (f" ({paired['ratio']:.2f}x, interleaved)" if paired else ""))
    elif paired:  # how many rounds INT8 won says how clear the margin is (bench.timing.paired_ratio)
        won = f", INT8 faster in {paired['rounds_int8_faster']}/{paired['rounds']} rounds" if paired.get("rounds") else ""
        parts.append(f"INT8/FP32 {paired['ratio']:.2f}x interleaved{won}")
    if "busy-machine" in (row.get("flags") or []):
        parts.append(f"⚠ busy machine (load {row['latency'].get('loadavg')})")
    parts += [n for n in row.get("notes") or []]
    if row.get("reused"):
        parts.append("reused")
    text = "; ".join(parts)
    return text if len(text) <= limit else text[: limit - 1] + "…"


SINGLE_HEADERS = ["Model", "Target", "Precision", "Status", "Size (MB)", "max abs", "cosine", "top-1",
                  "vs FP32", "fidelity", "p50 (ms)", "p90 (ms)", "Speed-up", "Notes"]


def quant_cell(par: dict[str, Any]) -> str:
    """The quantization-error verdict of the final stage: PASS, FAIL, 'not assessed' or —; a
    metric left out ("PASS (top-1 not assessed: …)") shows as 'PASS, no top-1'."""
    q = par.get("quantization")
    if not q:
        return "—"
    q = str(q)
    if q.startswith("not assessed"):
        return "not assessed"
    return q.split(" (", 1)[0] + (", no top-1" if "(top-1 not assessed" in q else "")


def fidelity_cell(par: dict[str, Any]) -> str:
    """Runtime fidelity against the shared graph (lowest stage SQNR): 'PASS 41.2 dB' or —."""
    f = par.get("fidelity")
    if not f:
        return "—"
    sq = f.get("sqnr_db")
    sq = "∞" if sq in (None, "inf") else f"{float(sq):.1f}"
    return f"{'PASS' if f.get('passed') else 'FAIL'} {sq} dB"


def single_device_table(report: dict[str, Any], notes_limit: int = 160) -> tuple[list[str], list[list[str]]]:
    rows = []
    for r in report["rows"]:
        par = r.get("parity") or {}
        lat = r.get("latency") or {}
        rows.append([r["model"], r["target"], r["precision"], STATUS_TEXT.get(r["status"], r["status"]),
                     "—" if r.get("size_mb") is None else f"{r['size_mb']:.1f}",
                     num(par.get("max_abs")), cos(par.get("cosine")), pct(par.get("top1")),
                     quant_cell(par), fidelity_cell(par),
                     ms(lat.get("p50_ms")), ms(lat.get("p90_ms")), speed(r.get("speedup")),
                     _notes(r, notes_limit)])
    return SINGLE_HEADERS, rows


def device_name(report: dict[str, Any], dev: str) -> str:
    fp = report.get("devices", {}).get(dev, {})
    return f"{fp.get('name') or dev} [{dev}]"


def per_device_table(report: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """A line per (model, target, precision, input shape); a column per device: p50 (speed-up)."""
    devs = device_ids(report)
    lines: dict[tuple, dict[str, list[dict[str, Any]]]] = {}
    for r in report["rows"]:
        lines.setdefault(cell_key(r), {}).setdefault(r["device_id"], []).append(r)
    headers = ["Model", "Target", "Precision", "Input", "Size (MB)", "cosine", "top-1", "vs FP32", "fidelity",
               *[f"{device_name(report, d)} p50 ms" for d in devs]]
    rows = []
    for (model, target, precision, shape), by_dev in lines.items():
        first = next(r for d in devs for r in by_dev.get(d, []))
        par = next(((r.get("parity") or {}) for d in devs for r in by_dev.get(d, []) if r.get("parity")), {})
        cells = []
        for d in devs:
            runs = by_dev.get(d, [])
            if not runs:
                cells.append("—")
                continue
            r = runs[-1]
            lat = (r.get("latency") or {}).get("p50_ms")
            if r["status"] == "error":
                cell = "ERROR"
            elif r["status"] == "skipped":
                cell = "skipped"
            else:
                cell = ms(lat) + (f" ({speed(r['speedup'])})" if r.get("speedup") and not r.get("baseline") else "")
                if r["status"] == "parity-fail":
                    cell += " FAIL"
                if "int8-slower-than-fp32" in (r.get("flags") or []):
                    cell += " ⚠"
            if len(runs) > 1:
                cell += f" ({len(runs)} runs)"
            cells.append(cell)
        rows.append([model, target, precision, "x".join(map(str, shape)) if shape else "—",
                     "—" if first.get("size_mb") is None else f"{first['size_mb']:.1f}",
                     cos(par.get("cosine")), pct(par.get("top1")), quant_cell(par), fidelity_cell(par), *cells])
    return headers, rows


def device_rows(report: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """One line per device: id, CPU, ISA, cores, memory, GPU, OS, Python."""
    headers = ["Device", "CPU", "ISA", "Cores / threads", "Memory (GB)", "GPU", "OS", "Python"]
    rows = []
    for d in device_ids(report):
        fp = report["devices"].get(d, {})
        cpu = fp.get("cpu", {})
        gpus = ", ".join(f"{g.get('name')} (driver {g.get('driver') or '?'})" for g in fp.get("gpus", [])) or "—"
        osd = fp.get("os", {})
        rows.append([f"{fp.get('name') or d} [{d}]", f"{cpu.get('model', '?')} ({cpu.get('arch', '?')})",
                     " ".join(cpu.get("isa", [])) or "—", f"{cpu.get('cores', '?')} / {cpu.get('threads', '?')}",
                     num(fp.get("memory_gb")), gpus, osd.get("distro") or osd.get("platform") or "?",
                     (fp.get("python") or {}).get("version", "?")])
    return headers, rows


def is_multi_device(report: dict[str, Any]) -> bool:
    return report.get("kind") == "merged" or len(device_ids(report)) > 1


def main_table(report: dict[str, Any], notes_limit: int = 160) -> tuple[list[str], list[list[str]]]:
    return per_device_table(report) if is_multi_device(report) else single_device_table(report, notes_limit)


def text_table(headers: list[str], rows: list[list[str]]) -> str:
    """Aligned plain text for the terminal."""
    cells = [headers, *rows]
    widths = [max(len(str(r[i])) for r in cells) for i in range(len(headers))]
    fmt = lambda r: "  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip()  # noqa: E731
    return "\n".join([fmt(headers), "  ".join("-" * w for w in widths), *(fmt(r) for r in rows)])
