"""Spare fallback steps: the Q/DQ graphs one and two float layers past a passed gate (and, when
the SQNR margin kept more layers, the graph of the first passing step: :func:`before_margin`).

The calibration gate judges the shared Q/DQ graph as ONNX Runtime runs it. A target then
executes that graph its own way (OpenVINO's fused kernels) or re-encodes it (the ONNX Runtime
form, ExecuTorch's and Core ML's own quantization points), and each moves the logits a little:
on a trained network whose shared graph passes by one held-out sample, that is enough to flip a
near-tie or two and fail the delivered artifact (torchvision's MobileNetV2 on OpenVINO: shared
graph 95.5 %, IR 94.0 % against a 95.0 % bar). So, when asked, :func:`quantize_int8` also
writes the next ``spare_steps`` steps of the same fallback: the same calibration, ranges and
rounding, with the next most INT8-sensitive layers of its ranking in float, within the same
float budget. The pipeline (edgekit/retry.py) swaps one in only when the delivered artifact fails
its quantization check while the shared graph passed and the runtime's fidelity held; it never
re-calibrates and never chooses on anything but the export's own gate.

:func:`alternate` is the one re-calibration: for targets that quantize in PyTorch on grids of
their own (ExecuTorch, Core ML; ``Exporter.alternate_calibration``), when every attempt on the
target's calibration misses the bar, the same calibration with the other activation signedness,
with spares of its own (edgekit/retry.py tries them after the first calibration's).
"""
from __future__ import annotations

import copy
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

from edgekit.artifact import Artifact

from . import graph as g
from . import qdq


def write(model, plan: qdq.QdqPlan, ranking, steps: int, max_float: int, folder: Path) -> list[dict[str, Any]]:
    """Write up to ``steps`` spare graphs to ``folder`` (``spare1.onnx``, ...), each with one more
    layer of ``ranking`` in float than the last, never past ``max_float`` float layers."""
    floats, out = set(plan.float_nodes), []
    for s in ranking:
        if len(out) >= steps or len(floats) >= max_float:
            break
        if s.node in floats:
            continue
        floats.add(s.node)
        out.append(_record(model, plan, floats, folder, f"spare{len(out) + 1}.onnx", float_added=s.node,
                           layer_sqnr_db=round(s.sqnr_db, 2)))
    return out


def before_margin(model, plan: qdq.QdqPlan, floats: set[str], folder: Path) -> dict[str, Any]:
    """The graph of the fallback's first passing step, written to ``folder`` when its SQNR margin
    (calibration/fallback.py) kept more layers in float: one more draw for a target whose artifact
    misses the bar on near-ties (pretrained Lite1 on Core ML, 2026-12-08: 96.0 % against a 97.0 %
    bar at 26.7 dB with the margin's 8 float layers and its two spares, 98.0 % at 25.3 dB with the
    first pass's 6). Tried after the spare steps, before the alternate calibration."""
    return _record(model, plan, floats, folder, "before_margin.onnx", float_added=None, layer_sqnr_db=None,
                   before_margin=True)


def _record(model, plan: qdq.QdqPlan, floats: set[str], folder: Path, name: str, **extra) -> dict[str, Any]:
    """Write the Q/DQ graph of ``plan`` with ``floats`` in float to ``folder / name``; its record,
    with the activation lists of the manifest as they are for that float set."""
    spare = replace(plan, float_nodes=set(floats))
    folder.mkdir(parents=True, exist_ok=True)
    g.onnx_mod().save(qdq.build(model, spare), str(folder / name))
    return {"file": name, **extra, "float_layers": sorted(floats), "layers": spare.layer_counts(),
            **spare.activation_lists()}


def restore(meta: dict[str, Any], src_dir: Path, dest: Path | None) -> None:
    """Copy the spare files ``meta`` lists from ``src_dir`` (a cache entry) to ``dest``."""
    if dest is None:
        return
    dest.mkdir(parents=True, exist_ok=True)
    for d in meta.get("spares") or []:
        f = Path(src_dir) / d["file"]
        if f.is_file() and f.resolve() != (dest / d["file"]).resolve():
            shutil.copyfile(f, dest / d["file"])


def stages(art: Artifact, spare_dir: Path) -> list[Artifact]:
    """The spare steps of the Q/DQ stage ``art`` as stages of their own (missing files skipped).
    Each one's meta is ``art``'s with its float layers, its layer counts and the step recorded.
    ``art.meta["spares"]`` keeps what was prepared, without the scratch files' names (they are
    not delivered)."""
    out = []
    listed = (art.meta or {}).get("spares") or []
    if listed:
        art.meta["spares"] = [{k: d[k] for k in ("float_added", "layer_sqnr_db", "before_margin") if k in d}
                              for d in listed]
    steps = []
    for step, d in enumerate(listed, 1):
        if not d.get("before_margin"):
            steps.append({"float": d["float_added"], "layer_sqnr_db": d["layer_sqnr_db"], "spare": True})
        f = Path(spare_dir) / d["file"]
        if not f.is_file():
            continue
        meta = copy.deepcopy({k: v for k, v in art.meta.items() if k != "spares"})
        meta["float_layers"] = list(d["float_layers"])
        for k in ("unsigned_activations", "activation_floors"):
            if k in meta and k in d:
                meta[k] = copy.deepcopy(d[k])
        meta.setdefault("layers", {}).update(d.get("layers") or {})
        if d.get("before_margin"):
            meta.setdefault("gate", {})["fallback"] = [st for st in meta.get("gate", {}).get("fallback", [])
                                                       if not st.get("margin")]
            meta["spare_step"] = {"step": step, "before_margin": True, "float_layers": len(d["float_layers"])}
        else:
            meta.setdefault("gate", {}).setdefault("fallback", []).extend(copy.deepcopy(steps))
            meta["spare_step"] = {"step": step, "float_added": d["float_added"]}
        out.append(Artifact(path=f, stage=art.stage, format=art.format, precision=art.precision, target=art.target,
                            inputs=art.inputs, outputs=art.outputs, parent=art.parent, meta=meta, tools=art.tools))
    return out


def alternate(src: Artifact, options, calib, heldout, folder: Path, log, extra: dict | None = None) -> list[Artifact]:
    """The calibration of ``src`` with ``options`` but the other activation signedness (signed
    int8 ↔ uint8 where the graph proves a tensor never negative), written to ``folder``, and its
    spare steps: Q/DQ stages for further attempts, each marked ``alternate_calibration``.

    Why (measured 2026-12-06, Core ML W8A8 through the MIL interpreter, 200 held-out crops):
    neither signedness passes on every trained network. Signed: pretrained Lite0/1/2 pass,
    torchvision's MobileNetV2 fails (94.5 % against a 95.0 % bar; its shared graph spends the
    float budget). uint8: MobileNetV2 passes (96.5 %), Lite1 fails on near-ties even with both
    spare steps (96.5 % against 97.0 %). ``extra``: further ``Int8Options`` fields the target's
    alternate sets (``Exporter.alternate_options``; ExecuTorch: ``add_inputs``)."""
    from .quantize import quantize_int8

    extra = dict(extra or {})
    alt = replace(options, unsigned=not options.unsigned, **extra)
    kind = "uint8 where never negative" if alt.unsigned else "signed int8"
    before = "uint8 where never negative" if options.unsigned else "signed int8"
    log(f"every attempt on the calibration with {before} activations missed the bar: calibrating again with "
        f"{kind} activations")
    folder.mkdir(parents=True, exist_ok=True)
    art = quantize_int8(src, folder / "alternate.int8.onnx", calib, heldout, alt, log=log, spare_dir=folder)
    art.meta["alternate_calibration"] = {"activations": kind, "instead_of": before,
                                         "why": "every attempt on the first calibration missed the bar",
                                         **({"options": extra} if extra else {})}
    return [art, *stages(art, folder)]
