"""FP16 graph transform: FP16 weights, FP32 I/O, fragile ops kept FP32, parity on real photos."""
import numpy as np
import onnx
import pytest
import torch

from calibration.fp16 import convert_fp16
from edgekit.compare import Comparison, tolerance_for
from edgekit.images import bundled_photos, load_image
from edgekit.models import create_model, get_spec
from exporters.onnx.exporter import OrtRunner, export_onnx


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    d = tmp_path_factory.mktemp("fp16")
    spec = get_spec("mobilenet_v3_small")
    art = export_onnx(create_model("mobilenet_v3_small"), (spec.input,), d / "m.onnx")
    return spec, art, convert_fp16(art, d / "m.fp16.onnx")


def test_fp16_graph_has_fp16_weights_and_fp32_io(converted):
    _, _, fp16 = converted
    m = onnx.load(str(fp16.path))
    f16 = onnx.TensorProto.FLOAT16
    weights = [i for i in m.graph.initializer if len(i.dims) == 4]
    assert weights and all(i.data_type == f16 for i in weights)
    assert m.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert m.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert any(n.op_type == "Cast" for n in m.graph.node)
    assert fp16.path.stat().st_size < 0.6 * converted[1].path.stat().st_size


def test_fp16_parity_on_real_photos(converted):
    spec, fp32, fp16 = converted
    model = create_model("mobilenet_v3_small")
    comp = Comparison("fp16", "onnxruntime", "fp16", tolerance_for("fp16"))
    with OrtRunner(fp16.path) as runner:
        for p in bundled_photos():
            x = load_image(p, spec.preprocess)[None]
            with torch.inference_mode():
                ref = model(torch.from_numpy(x)).numpy()
            comp.add({"output": ref}, runner.infer({"input": x}))
    score = comp.primary()
    assert score.cosine >= 0.999 and score.sqnr_db >= 25, comp.failures
    assert np.isfinite(score.max_abs)
