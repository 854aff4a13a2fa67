"""A report as Markdown: the main table, the checks, the devices and runtime versions."""
from __future__ import annotations

from typing import Any

from .schema import device_ids
from .table import device_rows, is_multi_device, main_table

TITLES = {"bench": "edgekit latency report", "matrix": "edgekit benchmark matrix",
          "ci": "edgekit CI parity report", "merged": "edgekit latency report (merged)"}


NO_INT8_SLOWER = "No default INT8 artifact is slower than its FP32 sibling on the same runtime."


def _esc(cell: Any) -> str:
    return str(cell).replace("|", "\\|").replace("\n", " ")


def md_table(headers: list[str], rows: list[list[Any]]) -> str:
    out = ["| " + " | ".join(_esc(h) for h in headers) + " |",
           "|" + "|".join("---" for _ in headers) + "|"]
    out += ["| " + " | ".join(_esc(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def settings_line(report: dict[str, Any]) -> str:
    s = report.get("settings") or {}
    parts = [f"{k} {v}" for k, v in s.items() if v is not None and not isinstance(v, (dict, list))]
    return ", ".join(parts)


def versions_table(report: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    devs = device_ids(report)
    names = sorted({n for d in devs for n in (report["devices"].get(d, {}).get("runtimes") or {})})
    headers = ["Runtime", *[report["devices"].get(d, {}).get("name", d) + f" [{d}]" for d in devs]]
    rows = [[n, *[(report["devices"].get(d, {}).get("runtimes") or {}).get(n, "—") for d in devs]] for n in names]
    return headers, rows


def render_markdown(report: dict[str, Any]) -> str:
    lines = [f"# {TITLES.get(report.get('kind'), 'edgekit report')}", ""]
    devs = device_ids(report)
    if not is_multi_device(report) and devs:
        fp = report["devices"].get(devs[0], {})
        lines.append(f"Device: **{fp.get('name', devs[0])}** (`{devs[0]}`)  ")
    lines.append(f"Created {report.get('created', '?')} by edgekit {report.get('edgekit', '?')}"
                 + (f"; {settings_line(report)}" if settings_line(report) else "") + ".")
    lines += ["", md_table(*main_table(report)), ""]
    lines.append("Latency is per inference call at the batch shown by the input shape; speed-up is torch eager "
                 "FP32 p50 on the same device divided by the row's p50. Parity columns describe the final stage "
                 "against PyTorch on held-out images; 'vs FP32' is the quantization-error verdict (not assessed "
                 "for untrained weights), 'fidelity' the lowest SQNR of a reduced-precision stage against the "
                 "shared Q/DQ or FP16 graph run by ONNX Runtime (docs/calibration.md).")
    checks = report.get("checks") or []
    lines += ["", "## Checks", ""]
    lines += [f"- ⚠ {c['message']}" for c in checks]
    if not any(c.get("check") == "int8-slower-than-fp32" for c in checks):
        lines.append(f"- {NO_INT8_SLOWER}")
    failed = [r for r in report["rows"] if r["status"] in ("error", "parity-fail")]
    for r in failed:
        what = r.get("error") or "; ".join((r.get("parity") or {}).get("failures") or [])
        lines.append(f"- {r['model']} / {r['target']} / {r['precision']} on {r['device_id']}: "
                     f"{r['status']}: {what}")
    lines += ["", "## Devices", "", md_table(*device_rows(report)), "", "## Runtime versions", "",
              md_table(*versions_table(report)), ""]
    return "\n".join(lines)
