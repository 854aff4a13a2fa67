"""A report as one self-contained HTML page: tables, plots as embedded PNG data URIs,
the device fingerprints and the report JSON itself. No external resources: the page
opens offline, from a CI artifact or an e-mail attachment."""
from __future__ import annotations

import base64
import html
from typing import Any

from .markdown import NO_INT8_SLOWER, TITLES, settings_line, versions_table
from .schema import device_ids, dumps
from .table import device_rows, is_multi_device, main_table

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:1400px;
     padding:0 1rem;color:#222}
h1{font-size:1.5rem} h2{font-size:1.15rem;margin-top:2rem}
table{border-collapse:collapse;font-size:.85rem;margin:.5rem 0}
th,td{border:1px solid #ccc;padding:.25rem .5rem;text-align:left;vertical-align:top}
th{background:#f3f3f3} td.num{text-align:right;font-variant-numeric:tabular-nums}
tr.error td{background:#fdecea} tr.parity-fail td{background:#fff4e5} tr.skipped td{color:#888}
.flag{color:#b45309;font-weight:600} figure{margin:1rem 0} figure img{max-width:100%;height:auto;
     border:1px solid #eee} figcaption{font-size:.85rem;color:#555} .muted{color:#666;font-size:.85rem}
details pre{font-size:.75rem;background:#f8f8f8;padding:.5rem;overflow:auto;max-height:30rem}
"""


def _e(x: Any) -> str:
    return html.escape(str(x), quote=True)


def _is_num(cell: str) -> bool:
    c = cell.replace("×", "").replace("%", "").replace("—", "").strip()
    try:
        float(c.split(" ")[0])
        return True
    except ValueError:
        return False


def html_table(headers: list[str], rows: list[list[Any]], row_classes: list[str] | None = None,
               numeric: bool = True) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = []
    for i, r in enumerate(rows):
        cls = f' class="{_e(row_classes[i])}"' if row_classes and row_classes[i] else ""
        cells = "".join(f'<td class="num">{_e(c)}</td>' if numeric and _is_num(str(c)) else f"<td>{_e(c)}</td>"
                        for c in r)
        body.append(f"<tr{cls}>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _plots_html(report: dict[str, Any]) -> str:
    try:
        from .plots import render_plots

        plots = render_plots(report)
    except ImportError:
        return ('<p class="muted">Plots need matplotlib, which is not installed: '
                "<code>pip install 'edgekit[report]'</code></p>")
    if not plots:
        return '<p class="muted">No measured rows to plot.</p>'
    return "\n".join(f'<figure id="plot-{pid}"><img alt="{_e(title)}" src="{data_uri(png)}">'
                     f"<figcaption>{_e(title)}</figcaption></figure>" for pid, title, png in plots)


def render_html(report: dict[str, Any]) -> str:
    title = TITLES.get(report.get("kind"), "edgekit report")
    headers, rows = main_table(report, notes_limit=400)
    classes = None if is_multi_device(report) else [r["status"] for r in report["rows"]]
    devs = device_ids(report)
    if is_multi_device(report):
        sub = f"{len(devs)} devices"
    elif devs:
        name = report["devices"].get(devs[0], {}).get("name", devs[0])
        sub = f"Device: {_e(name)} (<code>{_e(devs[0])}</code>)"
    else:
        sub = "No device"
    checks = report.get("checks") or []
    items = [f'<li class="flag">⚠ {_e(c["message"])}</li>' for c in checks]
    if not any(c.get("check") == "int8-slower-than-fp32" for c in checks):
        items.append(f"<li>{_e(NO_INT8_SLOWER)}</li>")
    checks_html = f"<ul>{''.join(items)}</ul>"
    fps = "".join(f"<details><summary>{_e(report['devices'][d].get('name', d))} [{_e(d)}]</summary>"
                  f"<pre>{_e(dumps(report['devices'][d]))}</pre></details>" for d in devs if d in report["devices"])
    settings = settings_line(report)
    created = (f"Created {_e(report.get('created', '?'))} by edgekit {_e(report.get('edgekit', '?'))}"
               + (f"; {_e(settings)}" if settings else "") + ".")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{_e(title)}</title><style>{CSS}</style></head>
<body>
<h1>{_e(title)}</h1>
<p>{sub}. {created}</p>
<h2>Results</h2>
{html_table(headers, rows, classes)}
<p class="muted">Latency is per inference call at the batch in the input shape (p50/p90 over the timed runs
after warm-up); speed-up is torch eager FP32 p50 on the same device divided by the row's p50. Parity columns
describe the final stage against PyTorch on held-out images.</p>
<h2>Checks</h2>
{checks_html}
<h2>Plots</h2>
{_plots_html(report)}
<h2>Devices</h2>
{html_table(*device_rows(report))}
<h2>Runtime versions</h2>
{html_table(*versions_table(report), numeric=False)}
<h2>Raw data</h2>
{fps}
<details><summary>report JSON ({_e(report.get('schema'))})</summary><pre>{_e(dumps(report))}</pre></details>
</body></html>
"""
