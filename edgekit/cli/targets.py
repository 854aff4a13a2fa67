"""``edgekit targets``: every target, whether it runs here, its version or why not."""
from __future__ import annotations

import argparse


def register(sub) -> None:
    p = sub.add_parser("targets", help="list export targets and whether they can run here")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from edgekit.console import Console
    from edgekit.targets import list_targets

    rows = []
    for t in list_targets():
        ok, detail = t.available()
        rows.append([t.name, ", ".join(t.aliases) or "-", ",".join(t.precisions), "yes" if ok else "no", detail,
                     f"pip install 'edgekit[{t.extra}]'" if not ok else ""])
    Console().table(["target", "aliases", "precisions", "available", "version / reason", "install"], rows)
    return 0
