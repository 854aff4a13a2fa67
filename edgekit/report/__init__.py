"""Reports: JSON (``edgekit.report/1``, the source of truth), Markdown and HTML views,
and merging reports from several devices. matplotlib is imported only to draw plots."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from .schema import SCHEMA, load_report, make_row, new_report, save_report, write_text

__all__ = ["SCHEMA", "load_report", "make_row", "new_report", "save_report", "write_outputs", "write_text"]


def write_outputs(report: dict[str, Any], json_path: str | Path | None = None, md_path: str | Path | None = None,
                  html_path: str | Path | None = None) -> list[Path]:
    """Write the views asked for; returns the paths written."""
    written = []
    if json_path:
        written.append(save_report(report, json_path))
    if md_path:
        from .markdown import render_markdown

        written.append(write_text(md_path, render_markdown(report)))
    if html_path:
        from .html import render_html

        written.append(write_text(html_path, render_html(report)))
    return written
