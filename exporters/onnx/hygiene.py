"""Graph hygiene: no unused initializers and no dangling nodes in a delivered ONNX.

Graph rewrites (calibration's Q/DQ insertion, bias correction, the ONNX Runtime form) replace
tensors and leave the old ones behind; ONNX Runtime then warns about every unused initializer
on every load ("Removing initializer ... It is not used by any node"), and a user reading the
file sees tensors that nothing computes with. :func:`prune` runs at the end of every
ONNX-producing stage (edgekit/pipeline.py, exporters/onnx/quant.py): it removes nodes none of
whose outputs is read (repeatedly, so chains go too), then initializers, value_info and
initializer-backed graph inputs that nothing reads. Nodes inside subgraphs (If/Loop bodies) are
kept, and the outer-scope names they read count as read.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from edgekit.artifact import replace_file


def _reads(graph) -> set[str]:
    names: set[str] = set()
    for node in graph.node:
        names.update(i for i in node.input if i)
        for attr in node.attribute:
            for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                names |= _reads(sub)
    return names


def prune_model(model) -> dict[str, list[str]]:
    """Prune ``model`` (an onnx.ModelProto) in place; returns what was removed."""
    graph = model.graph
    outputs = {o.name for o in graph.output}
    removed_nodes: list[str] = []
    while True:
        reads = _reads(graph) | outputs
        dead = [n for n in graph.node if not any(o in reads for o in n.output if o)]
        if not dead:
            break
        for n in dead:
            removed_nodes.append(n.name or n.op_type)
            graph.node.remove(n)
    reads = _reads(graph) | outputs
    unused = [i for i in graph.initializer if i.name not in reads]
    for i in unused:
        graph.initializer.remove(i)
    unused_names = {i.name for i in unused}
    for inp in [i for i in graph.input if i.name in unused_names]:
        graph.input.remove(inp)
    produced = {o for n in graph.node for o in n.output} | {i.name for i in graph.initializer} | \
        {i.name for i in graph.input}
    for vi in [v for v in graph.value_info if v.name not in produced]:
        graph.value_info.remove(vi)
    return {"nodes": removed_nodes, "initializers": sorted(unused_names)}


def prune(path: Path) -> dict[str, Any]:
    """Prune the ONNX file at ``path`` in place (atomically; untouched when nothing is unused)."""
    import onnx

    path = Path(path)
    model = onnx.load(str(path))
    removed = prune_model(model)
    if removed["nodes"] or removed["initializers"]:
        replace_file(path, lambda tmp: onnx.save(model, tmp))
    return {"removed_nodes": len(removed["nodes"]), "removed_initializers": len(removed["initializers"]),
            "initializers": removed["initializers"][:20]}


def pruned(art):
    """``art`` (an ONNX Artifact) after :func:`prune`, with a fresh sha256 and what was removed
    in ``meta['hygiene']``."""
    from dataclasses import replace

    from edgekit.artifact import sha256_path

    info = prune(art.path)
    if not info["removed_nodes"] and not info["removed_initializers"]:
        return art
    return replace(art, sha256=sha256_path(art.path), meta={**art.meta, "hygiene": info})
