"""OpenVINO's integer-movement form (exporters/openvino/movement.py): ShuffleNetV2's concat, channel
shuffle and split run on int8 in OpenVINO's CPU plugin, and the numbers stay with the shared graph's."""
from __future__ import annotations

import numpy as np
import onnx
import pytest

from calibration import graph as g
from calibration.gate import run_outputs, score
from edgekit.compare import Tolerance
from tests.calibration.test_calibration import INPUT
from tests.exporters.onnx.test_ort_form import _built, _tiny_shufflenet, tiny_built  # noqa: F401

ov = pytest.importorskip("openvino", reason="openvino not installed (pip install 'edgekit[openvino]')")


def _runtime_precisions(path, kinds: tuple[str, ...]) -> dict[str, set[str]]:
    """Layer type → the precisions OpenVINO's CPU plugin runs it at, for ``kinds``."""
    compiled = ov.Core().compile_model(ov.convert_model(str(path)), "CPU",
                                       {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": "1"})
    out: dict[str, set[str]] = {}
    for op in compiled.get_runtime_model().get_ordered_ops():
        info = op.get_rt_info()
        kind = info["layerType"].astype(str)
        if kind in kinds:
            out.setdefault(kind, set()).add(info["runtimePrecision"].astype(str).lower())
    return out


def test_shufflenet_moves_integers_and_keeps_the_shared_graphs_accuracy(tmp_path):
    from exporters.openvino.movement import integer_movement

    src, fs, art = _built(_tiny_shufflenet(), tmp_path)
    m = g.named_copy(g.load(art.path))
    counts = integer_movement(m)
    # three stages, one group each; 5 concats with 2 inputs: 10, of which the 2 identity halves of the
    # basic units are already on the grid; each unit's split half and each stage's end lose their Q/DQ
    # (and the stem max-pool's quantizer moves ahead of it: exact)
    assert counts == {"groups": 3, "concat_inputs_quantized": 8, "end_pairs_removed": 5,
                      "quantizers_moved_up": 1}, counts
    onnx.checker.check_model(m)
    path = tmp_path / "movement.onnx"
    onnx.save(m, str(path))
    moves = ("Concatenation", "ShuffleChannels", "Split")
    before, after = _runtime_precisions(art.path, moves), _runtime_precisions(path, moves)
    assert before["Concatenation"] == {"f32"}, before  # the shared graph moves floats
    for kind in moves:
        assert after.get(kind) and after[kind] <= {"i8", "u8"}, (kind, after)
    # the same calibration, one rounding per value: within 1 dB of the shared graph against FP32
    ref = run_outputs(src.path, fs.heldout)
    shared = score(art.path, fs.heldout, ref, Tolerance(cosine=0.9)).primary()
    moved = score(path, fs.heldout, ref, Tolerance(cosine=0.9)).primary()
    assert moved.sqnr_db > shared.sqnr_db - 1.0, (shared.sqnr_db, moved.sqnr_db)
    # and no unused initializer is left behind (the removed pairs' scales)
    used = {i for n in m.graph.node for i in n.input}
    assert not [t.name for t in m.graph.initializer if t.name not in used]


def test_a_graph_without_concat_groups_is_left_alone(tiny_built):  # noqa: F811
    from exporters.openvino.movement import integer_movement

    _, _, art = tiny_built
    m = g.load(art.path)
    before = m.SerializeToString()
    assert integer_movement(m) == {"groups": 0, "concat_inputs_quantized": 0, "end_pairs_removed": 0,
                                   "quantizers_moved_up": 0}
    assert m.SerializeToString() == before


def test_a_group_feeding_a_float_consumer_stays_float(tmp_path):
    """A concat whose moved values reach anything but a quantized input (here the graph's output
    through a Relu) keeps its floats: the form only rewrites groups that end in Qs."""
    from onnx import TensorProto, helper, numpy_helper

    from exporters.openvino.movement import integer_movement

    s = numpy_helper.from_array(np.asarray(0.1, np.float32), "s")
    z = numpy_helper.from_array(np.asarray(0, np.int8), "z")
    nodes = [helper.make_node("Relu", ["a"], ["ra"]), helper.make_node("Relu", ["b"], ["rb"]),
             helper.make_node("Concat", ["ra", "rb"], ["c"], axis=1),
             helper.make_node("QuantizeLinear", ["c", "s", "z"], ["cq"]),
             helper.make_node("DequantizeLinear", ["cq", "s", "z"], ["cd"]),
             helper.make_node("Relu", ["c"], ["y"]), helper.make_node("Add", ["cd", "y"], ["out"])]
    shape = [1, 2, 4, 4]
    graph = helper.make_graph(nodes, "t", [helper.make_tensor_value_info(n, TensorProto.FLOAT, shape) for n in "ab"],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 4, 4, 4])], [s, z])
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    assert integer_movement(m)["groups"] == 0


def test_shufflenet_v1_shuffles_integers_with_the_same_values(tmp_path, monkeypatch):
    """ShuffleNetV1's shuffle sits between a grouped 1×1 and a depthwise convolution, with no
    concat: its quantizer moves ahead of it, exactly (a per-tensor quantizer commutes with a
    permutation), and OpenVINO shuffles u8."""
    import torch

    from calibration.graph import session
    from edgekit.models.shufflenet_v1 import ShuffleNetV1, ShuffleNetV1Config
    from exporters.openvino.movement import integer_movement
    from tests.exporters.onnx.test_ort_form import _settled

    torch.manual_seed(11)
    net = _settled(ShuffleNetV1(ShuffleNetV1Config(groups=3, stage_repeats=(2, 1, 1), stage_channels=(12, 48, 96, 192)), 10))
    src, fs, art = _built(net, tmp_path)
    m = g.named_copy(g.load(art.path))
    counts = integer_movement(m)
    assert counts["groups"] == 0 and counts["quantizers_moved_up"] >= 3, counts
    path = tmp_path / "moved.onnx"
    onnx.save(m, str(path))
    before = _runtime_precisions(art.path, ("ShuffleChannels",))
    after = _runtime_precisions(path, ("ShuffleChannels",))
    assert before["ShuffleChannels"] == {"f32"} and after["ShuffleChannels"] <= {"u8", "i8"}, (before, after)
    x = np.random.default_rng(0).standard_normal(INPUT.shape).astype(np.float32)
    want = session(art.path, optimize=False).run(None, {"input": x})[0]
    got = session(m, optimize=False).run(None, {"input": x})[0]
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)  # the same values, moved in another order
