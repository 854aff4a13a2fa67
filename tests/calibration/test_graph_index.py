"""calibration.graph.GraphIndex: the one graph index of the ONNX Runtime form's passes and of
the TensorRT lint's GraphView (issue 22)."""
import onnx
from onnx import TensorProto, helper

from calibration.graph import GraphIndex, consumers, producers


def _model():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    z = helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, 4])
    nodes = [helper.make_node("Relu", ["x"], ["r"], name="relu"),
             helper.make_node("Add", ["r", "r"], ["y"], name="add"),   # reads r in both slots
             helper.make_node("Neg", ["x"], ["z"], name="neg")]
    return helper.make_model(helper.make_graph(nodes, "g", [x], [y, z]))


def test_the_index_matches_the_map_helpers_and_lists_uses_with_their_slot():
    m = _model()
    ix = GraphIndex(m)
    assert {k: v.name for k, v in ix.producer.items()} == {k: v.name for k, v in producers(m).items()}
    assert {k: [n.name for n in v] for k, v in ix.consumers.items()} == \
        {k: [n.name for n in v] for k, v in consumers(m).items()}
    assert ix.consumers["y"] == [] and ix.consumers["z"] == []       # graph outputs, read by no node
    assert [(n.name, k) for n, k in ix.uses["r"]] == [("add", 0), ("add", 1)]
    assert [n.name for n in ix.consumers["x"]] == ["relu", "neg"]


def test_a_rewrite_shows_after_refresh():
    m = _model()
    ix = GraphIndex(m)
    m.graph.node.append(helper.make_node("Sigmoid", ["r"], ["s"], name="sig"))
    assert "s" not in ix.producer                                      # stale until refreshed
    assert ix.refresh() is ix and ix.producer["s"].name == "sig"
    assert [n.name for n in ix.consumers["r"]] == ["add", "add", "sig"]
    onnx.checker.check_model(m)


def test_the_tensorrt_view_reads_the_same_index():
    from exporters.tensorrt.graph import GraphView

    view = GraphView(_model())
    assert [(n.name, k) for n, k in view.consumers["r"]] == [("add", 0), ("add", 1)]
    assert view.producer["y"].name == "add" and set(view.inits) == set()
