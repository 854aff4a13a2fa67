"""Layer-by-layer localization: where does a model start to diverge from its reference?

Both ONNX models get their intermediate float tensors exposed as extra graph outputs
(in temporary copies); tensors are matched by name — Q/DQ insertion and FP16
conversion keep the original tensor names, adding their own beside them — and each
matched tensor gets an SQNR, 20·log10(‖ref‖ / ‖ref − test‖), over a few feeds (the
same measure as ONNX Runtime's ``qdq_loss_debug``). The result names the first node
(in graph order) whose output falls below the threshold and the worst one.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from edgekit.compare import cosine, sqnr_db
from edgekit.feeds import take

from . import graph as g

DEFAULT_THRESHOLD_DB = 20.0


def _float_outputs(model) -> list[tuple[str, str, str]]:
    """(tensor, producing node, op) for node outputs known or assumed to be float."""
    known = g.float_tensors(model)
    out = []
    for i, n in enumerate(model.graph.node):
        if n.op_type in ("QuantizeLinear", "Constant", "Shape", "Cast", "DequantizeLinear"):
            continue
        for o in n.output:
            if o and o in known:
                out.append((o, n.name or f"{n.op_type}_{i}", n.op_type))
    return out


def localize(reference_onnx: Path, test_onnx: Path, feeds: Iterable[dict[str, np.ndarray]], max_feeds: int = 4,
             threshold_db: float = DEFAULT_THRESHOLD_DB) -> dict[str, Any]:
    """Compare every intermediate tensor the two models share; see the module docstring."""
    ref_model, test_model = g.load(reference_onnx), g.load(test_onnx)
    ref_tensors = _float_outputs(ref_model)
    test_names = {t for t, _, _ in _test_candidates(test_model)}
    final_outputs = [o.name for o in ref_model.graph.output]
    shared = [(t, node, op) for t, node, op in ref_tensors if t in test_names and t not in final_outputs]
    names = [t for t, _, _ in shared]
    feeds = take(feeds, max_feeds)
    ref_sess = g.session(g.with_outputs(ref_model, names), optimize=False)
    test_sess = g.session(_with_float_outputs(test_model, names), optimize=False)
    ref_inputs = {i.name for i in ref_sess.get_inputs()}
    test_inputs = {i.name: i.type for i in test_sess.get_inputs()}
    fetch = names + final_outputs
    test_out_names = [o.name for o in test_sess.get_outputs()]
    acc: dict[str, list[np.ndarray]] = {t: [] for t in fetch}
    acc_test: dict[str, list[np.ndarray]] = {t: [] for t in fetch}
    for feed in feeds:
        r = ref_sess.run(fetch, {k: v for k, v in feed.items() if k in ref_inputs})
        test_feed = {k: np.asarray(v, np.float16 if test_inputs[k] == "tensor(float16)" else np.float32)
                     for k, v in feed.items() if k in test_inputs}
        t_all = dict(zip(test_out_names, test_sess.run(None, test_feed)))
        t_final = [t_all[n] for n in test_out_names[:len(final_outputs)]]
        for name, a in zip(fetch, r):
            acc[name].append(np.asarray(a, np.float32).reshape(-1))
        for name in names:
            acc_test[name].append(np.asarray(t_all[_float_name(name)], np.float32).reshape(-1))
        for name, a in zip(final_outputs, t_final):
            acc_test[name].append(np.asarray(a, np.float32).reshape(-1))
    layers = []
    for t, node, op in shared + [(o, "(output)", "output") for o in final_outputs]:
        ref, test = np.concatenate(acc[t]), np.concatenate(acc_test[t])
        if ref.shape != test.shape:
            continue
        layers.append({"tensor": t, "node": node, "op": op, "sqnr_db": _finite(sqnr_db(ref, test)),
                       "cosine": round(cosine(ref, test), 6), "max_abs": float(np.abs(ref - test).max(initial=0))})
    below = [x for x in layers if x["sqnr_db"] is not None and x["sqnr_db"] < threshold_db]
    scored = [x for x in layers if x["sqnr_db"] is not None]
    worst = min(scored, key=lambda x: x["sqnr_db"]) if scored else None
    return {"reference": str(reference_onnx), "test": str(test_onnx), "feeds": len(feeds),
            "threshold_db": threshold_db, "layers": layers, "matched": len(layers),
            "first_below": below[0] if below else None, "worst": worst}


def _test_candidates(model):
    """Float (or float16) node outputs of the test model."""
    onnx = g.onnx_mod()
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:
        inferred = model
    ok = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16)
    types = {v.name: v.type.tensor_type.elem_type for v in (*inferred.graph.value_info, *inferred.graph.output)}
    return [(o, n.name, n.op_type) for n in model.graph.node for o in n.output if types.get(o) in ok]


def _float_name(t: str) -> str:
    return f"{t}__as_float32"


def _with_float_outputs(model, names: list[str]):
    """Expose ``names`` as float32 outputs (a Cast is added where the tensor is float16)."""
    onnx = g.onnx_mod()
    m = onnx.ModelProto()
    m.CopyFrom(model)
    for n in names:
        m.graph.node.append(onnx.helper.make_node("Cast", [n], [_float_name(n)], to=onnx.TensorProto.FLOAT,
                                                  name=f"{n}__localize_cast"))
        m.graph.output.append(onnx.helper.make_tensor_value_info(_float_name(n), onnx.TensorProto.FLOAT, None))
    return m


def _finite(x: float) -> float | None:
    return round(x, 2) if math.isfinite(x) else None


def format_localization(result: dict[str, Any], limit: int = 40) -> str:
    """A plain-text table: one row per matched tensor, with the first and worst marked."""
    layers = result["layers"]
    first = result.get("first_below")
    worst = result.get("worst")
    lines = [f"layer-by-layer SQNR over {result['feeds']} feeds ({result['matched']} tensors matched, "
             f"threshold {result['threshold_db']} dB)",
             f"{'#':>4}  {'node':40s} {'op':18s} {'SQNR dB':>8}  {'cosine':>9}"]
    shown = list(enumerate(layers)) if len(layers) <= limit else _focus(layers, first, worst, limit)
    for i, x in shown:
        mark = ""
        if first is not None and x is first:
            mark += "  <- first below threshold"
        if worst is not None and x is worst:
            mark += "  <- worst"
        sq = "inf" if x["sqnr_db"] is None else f"{x['sqnr_db']:.1f}"
        lines.append(f"{i:>4}  {x['node'][:40]:40s} {x['op'][:18]:18s} {sq:>8}  {x['cosine']:9.6f}{mark}")
    if first is not None:
        lines.append(f"first diverging node: {first['node']} ({first['op']}, {first['sqnr_db']} dB)")
    else:
        lines.append(f"no tensor below {result['threshold_db']} dB")
    if worst is not None:
        lines.append(f"worst node: {worst['node']} ({worst['op']}, {worst['sqnr_db']} dB)")
    return "\n".join(lines)


def _focus(layers, first, worst, limit):
    """Rows around the first and worst layers, plus the last (the output)."""
    keep = set()
    for target in (first, worst):
        if target is not None:
            i = layers.index(target)
            keep.update(range(max(0, i - 3), min(len(layers), i + 4)))
    keep.add(len(layers) - 1)
    step = max(1, len(layers) // max(1, limit - len(keep)))
    keep.update(range(0, len(layers), step))
    return [(i, layers[i]) for i in sorted(keep)][:limit + 8]
