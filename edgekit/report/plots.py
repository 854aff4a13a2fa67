"""The report's plots as PNG bytes: latency, speed-up over torch eager, parity metrics.

matplotlib is imported lazily and used through its object API with the Agg canvas
(no pyplot, no global backend switch), so rendering works headless and inside other
programs' processes.
"""
from __future__ import annotations

import io
import math
from typing import Any, Callable

from .schema import cell_key, device_ids

PRECISION_COLORS = {"fp32": "#1f77b4", "fp16": "#ff7f0e", "int8": "#2ca02c"}
DEVICE_COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
                 "#bcbd22", "#17becf")
BASELINE_COLOR = "#7f7f7f"


def _label(key: tuple) -> str:
    model, target, precision, shape = key
    return f"{model} · {target} · {precision}"


def _num(v: Any) -> float | None:
    if isinstance(v, (int, float)) and math.isfinite(v):
        return float(v)
    if v == "inf":
        return math.inf
    return None


def _grid(report: dict[str, Any], keep: Callable[[dict[str, Any]], bool]):
    """(labels, {device: [row or None per label]}) for the rows ``keep`` accepts."""
    keys: list[tuple] = []
    table: dict[tuple, dict[str, dict[str, Any]]] = {}
    for r in report["rows"]:
        if not keep(r):
            continue
        k = cell_key(r)
        if k not in table:
            keys.append(k)
            table[k] = {}
        table[k][r["device_id"]] = r
    devs = [d for d in device_ids(report) if any(d in table[k] for k in keys)]
    return [_label(k) for k in keys], {d: [table[k].get(d) for k in keys] for d in devs}


def _vals(rows: dict[str, list], fn: Callable[[dict[str, Any]], Any]) -> dict[str, list]:
    return {d: [None if r is None else fn(r) for r in rs] for d, rs in rows.items()}


def _figure(n_bars: int, panels: int = 1, width: float = 9.0):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    height = max(2.2, 0.32 * n_bars + 1.3)
    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, panels, sharey=True, squeeze=False)[0]
    return fig, axes


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _barh(ax, labels: list[str], vals: dict[str, list], rows: dict[str, list], report: dict[str, Any],
          err: dict[str, list] | None = None, cap: float | None = None, legend: bool = True) -> None:
    devs = list(vals)
    multi = len(devs) > 1
    n = len(labels)
    h = 0.8 / max(len(devs), 1)
    for j, d in enumerate(devs):
        ys = [i + (j - (len(devs) - 1) / 2) * h for i in range(n)]
        xs = [(min(v, cap) if cap and v is not None else v) for v in vals[d]]
        pick = [i for i, v in enumerate(xs) if v is not None]
        if not pick:
            continue
        if multi:
            colors = DEVICE_COLORS[j % len(DEVICE_COLORS)]
        else:
            colors = [BASELINE_COLOR if rows[d][i].get("baseline") else
                      PRECISION_COLORS.get(rows[d][i]["precision"], "#9467bd") for i in pick]
        xerr = None
        if err:
            xerr = [[0.0] * len(pick), [max((err[d][i] or xs[i]) - xs[i], 0.0) for i in pick]]
        ax.barh([ys[i] for i in pick], [xs[i] for i in pick], height=h * 0.9, color=colors, xerr=xerr,
                ecolor="#333333", capsize=2,
                label=(report["devices"].get(d, {}).get("name", d) + f" [{d}]") if multi else None)
    ax.set_yticks(range(n), labels)
    ax.invert_yaxis()
    ax.grid(axis="x", alpha=0.3)
    if multi and legend:  # device names are long: one legend under the figure
        handles, names = ax.get_legend_handles_labels()
        ax.figure.legend(handles, names, fontsize=8, loc="outside lower center", ncols=min(len(names), 2))


def _precision_legend(ax) -> None:
    from matplotlib.patches import Patch

    handles = [Patch(color=c, label=p) for p, c in PRECISION_COLORS.items()]
    handles.append(Patch(color=BASELINE_COLOR, label="torch eager"))
    ax.legend(handles=handles, fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))


def latency_plot(report: dict[str, Any]) -> bytes | None:
    """p50 latency per model/target/precision (whisker to p90), a bar per device."""
    p50 = lambda r: _num((r.get("latency") or {}).get("p50_ms"))  # noqa: E731
    labels, rows = _grid(report, lambda r: r["status"] in ("ok", "parity-fail") and p50(r) is not None)
    if not labels:
        return None
    vals = _vals(rows, p50)
    p90 = _vals(rows, lambda r: _num((r.get("latency") or {}).get("p90_ms")))
    fig, (ax,) = _figure(len(labels) * max(len(vals), 1))
    _barh(ax, labels, vals, rows, report, err=p90)
    flat = [v for vs in vals.values() for v in vs if v]
    if flat and max(flat) / max(min(flat), 1e-9) > 30:
        ax.set_xscale("log")
    ax.set_xlabel("latency per inference, ms (bar: p50, whisker: p90) — lower is better")
    ax.set_title("Latency")
    if len(vals) == 1:
        _precision_legend(ax)
    return _png(fig)


def speedup_plot(report: dict[str, Any]) -> bytes | None:
    """Speed-up over torch eager FP32 on the same device."""
    sp = lambda r: _num(r.get("speedup"))  # noqa: E731
    labels, rows = _grid(report, lambda r: not r.get("baseline") and r["status"] in ("ok", "parity-fail")
                         and sp(r) is not None)
    if not labels:
        return None
    vals = _vals(rows, sp)
    fig, (ax,) = _figure(len(labels) * max(len(vals), 1))
    _barh(ax, labels, vals, rows, report)
    ax.axvline(1.0, color="#d62728", linestyle="--", linewidth=1)
    ax.set_xlabel("speed-up over torch eager FP32 (p50 ratio) — higher is better; dashed: 1×")
    ax.set_title("Speed-up over torch eager")
    if len(vals) == 1:
        _precision_legend(ax)
    return _png(fig)


SQNR_CAP = 140.0


def parity_plot(report: dict[str, Any]) -> bytes | None:
    """Final-stage parity: max abs error (log), SQNR (dB), top-1 agreement (%)."""
    par = lambda r, k: _num((r.get("parity") or {}).get(k))  # noqa: E731
    labels, rows = _grid(report, lambda r: not r.get("baseline") and par(r, "max_abs") is not None)
    if not labels:
        return None
    mabs = _vals(rows, lambda r: par(r, "max_abs"))
    sqnr = _vals(rows, lambda r: par(r, "sqnr_db"))
    top1 = _vals(rows, lambda r: None if par(r, "top1") is None else 100.0 * par(r, "top1"))
    fig, axes = _figure(len(labels) * max(len(mabs), 1), panels=3, width=12.0)
    mabs_pos = {d: [max(v, 1e-12) if v is not None else None for v in vs] for d, vs in mabs.items()}
    _barh(axes[0], labels, mabs_pos, rows, report)
    axes[0].set_xscale("log")
    axes[0].set_xlabel("max abs error (log) — lower is better")
    _barh(axes[1], labels, sqnr, rows, report, cap=SQNR_CAP, legend=False)
    axes[1].set_xlabel(f"SQNR, dB (capped at {SQNR_CAP:.0f}) — higher is better")
    _barh(axes[2], labels, top1, rows, report, legend=False)
    axes[2].set_xlim(0, 100)
    axes[2].set_xlabel("top-1 agreement with PyTorch, %")
    fig.suptitle("Parity of the final stage against PyTorch")
    return _png(fig)


PLOTS = (("latency", "Latency per target and precision", latency_plot),
         ("speedup", "Speed-up over torch eager FP32", speedup_plot),
         ("parity", "Parity metrics (final stage vs PyTorch)", parity_plot))


def render_plots(report: dict[str, Any]) -> list[tuple[str, str, bytes]]:
    """[(id, title, png bytes)] for every plot that has data."""
    out = []
    for pid, title, fn in PLOTS:
        png = fn(report)
        if png:
            out.append((pid, title, png))
    return out
