"""ONNX → simplified ONNX (onnxsim by default, onnxslim as an option).

A simplifier failure is an error naming this stage; ``--no-simplify`` skips it.
Node counts before and after are recorded in the stage's manifest entry.
"""
from __future__ import annotations

import time
from pathlib import Path

from edgekit.artifact import Artifact, tool_versions
from edgekit.errors import UsageError, backend_errors, require

from .exporter import node_counts

SIMPLIFIERS = ("onnxsim", "onnxslim")


def simplify(src: Artifact, path: Path, tool: str = "onnxsim") -> Artifact:
    if tool not in SIMPLIFIERS:
        raise UsageError(f"unknown simplifier '{tool}'", hint=f"choose one of {', '.join(SIMPLIFIERS)}")
    onnx = require("onnx", "onnx")
    t0 = time.perf_counter()
    with backend_errors("simplify", f"{tool} failed", hint="rerun with --no-simplify to skip this stage", with_type=False):
        if tool == "onnxsim":
            onnxsim = require("onnxsim", "onnx", "the onnxsim simplifier")
            model, ok = onnxsim.simplify(onnx.load(str(src.path)))
            if not ok:
                raise RuntimeError("onnxsim could not validate the simplified model against the original")
        else:
            onnxslim = require("onnxslim", "onnx", "the onnxslim simplifier")
            model = onnxslim.slim(onnx.load(str(src.path)))
        onnx.save(model, str(path))
    before, after = src.meta.get("nodes") or sum(node_counts(src.path).values()), len(model.graph.node)
    return Artifact(path=path, stage="simplified", format="onnx", precision=src.precision, target="onnx",
                    inputs=src.inputs, outputs=tuple(o.name for o in model.graph.output), parent=src.sha256,
                    meta={"simplifier": tool, "nodes_before": before, "nodes": after,
                          "node_counts": node_counts(model), "seconds": round(time.perf_counter() - t0, 2)},
                    tools=tool_versions("onnx", tool))
