"""``edgekit report merge|render``: join reports from several devices; re-render one."""
from __future__ import annotations

import argparse
from pathlib import Path


def register(sub) -> None:
    p = sub.add_parser("report", help="merge reports from several devices, or render a report",
                       description="Reports are JSON (schema edgekit.report/1) written by 'edgekit bench', "
                                   "'edgekit matrix' and 'edgekit ci'; Markdown and HTML are rendered from them.")
    rsub = p.add_subparsers(dest="report_command", metavar="ACTION")
    m = rsub.add_parser("merge", help="join report JSONs into one table with a column per device",
                        description="Join reports (for instance one 'edgekit bench --json' per device of a fleet) "
                                    "into one report with a latency column per device and one set of plots. "
                                    "Writes OUT.json, OUT.md and OUT.html unless --json/--md/--html pick some.")
    m.add_argument("reports", nargs="+", type=Path, metavar="REPORT.json")
    m.add_argument("-o", "--out", type=Path, required=True, help="output path without suffix (e.g. fleet/merged)")
    _format_flags(m)
    m.set_defaults(func=run_merge)
    r = rsub.add_parser("render", help="render a report JSON as Markdown and/or HTML",
                        description="Writes IN.md / IN.html beside the input unless paths are given.")
    r.add_argument("report", type=Path, metavar="REPORT.json")
    r.add_argument("--md", nargs="?", const=True, default=None, metavar="PATH", help="write Markdown")
    r.add_argument("--html", nargs="?", const=True, default=None, metavar="PATH", help="write HTML")
    r.set_defaults(func=run_render)
    p.set_defaults(func=lambda args: _usage(p))


def _format_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="write OUT.json")
    p.add_argument("--md", action="store_true", help="write OUT.md")
    p.add_argument("--html", action="store_true", help="write OUT.html")


def _usage(p: argparse.ArgumentParser) -> int:
    p.print_help()
    return 2


def _stem(path: Path) -> Path:
    return path.with_suffix("") if path.suffix.lower() in (".json", ".md", ".html") else path


def run_merge(args: argparse.Namespace) -> int:
    from edgekit.console import Console
    from edgekit.report import write_outputs
    from edgekit.report.merge import merge_files
    from edgekit.report.table import main_table, text_table

    console = Console(quiet=getattr(args, "quiet", False))
    merged = merge_files(args.reports)
    for note in merged.get("replaced") or []:
        console.warn(f"duplicate measurement, the later one kept: {note}")
    console.print(text_table(*main_table(merged)))
    stem = _stem(args.out)
    every = not (args.json or args.md or args.html)
    written = write_outputs(merged, stem.with_suffix(".json") if every or args.json else None,
                            stem.with_suffix(".md") if every or args.md else None,
                            stem.with_suffix(".html") if every or args.html else None)
    for p in written:
        console.info(f"wrote {p}")
    return 0


def run_render(args: argparse.Namespace) -> int:
    from edgekit.console import Console
    from edgekit.report import load_report, write_outputs

    console = Console(quiet=getattr(args, "quiet", False))
    report = load_report(args.report)
    if args.md is None and args.html is None:
        args.md = args.html = True
    md = None if args.md is None else (args.report.with_suffix(".md") if args.md is True else Path(args.md))
    html = None if args.html is None else (args.report.with_suffix(".html") if args.html is True else Path(args.html))
    for p in write_outputs(report, None, md, html):
        console.info(f"wrote {p}")
    return 0
