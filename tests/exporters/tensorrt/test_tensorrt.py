"""TensorRT target: the pre-flight lint, check(), the CLI, the removed-API scan — all without a GPU —
and the engine build + parity, which run only where an NVIDIA GPU and the tensorrt package are."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
from onnx import TensorProto as T  # noqa: E402
from onnx import helper as h  # noqa: E402
from onnx import numpy_helper as nh  # noqa: E402

from edgekit.artifact import Artifact, Manifest  # noqa: E402
from edgekit.contracts import ExportRequest  # noqa: E402
from tests.conftest import make_context  # noqa: E402
from edgekit.errors import ArtifactError, MissingDependencyError, UsageError  # noqa: E402
from edgekit.specs import InputSpec  # noqa: E402
from exporters.tensorrt.exporter import TensorRTTarget, table_version  # noqa: E402
from exporters.tensorrt.lint import lint_onnx  # noqa: E402

from tests.conftest import ROOT  # noqa: E402
GPU_SKIP = "TensorRT needs an NVIDIA GPU with the tensorrt package"
RNG = np.random.default_rng(0)


def errors(problems, node=None):
    return [p for p in problems if p["level"] == "error" and (node is None or p["node"] == node)]


def f32(name, arr):
    return nh.from_array(np.asarray(arr, dtype=np.float32), name)


def tiny_model(batch: int | str = 1):
    """Conv → Relu → ConvTranspose → Relu → GlobalAveragePool → Flatten → Gemm: every weighted op
    whose per-channel axis TensorRT cares about."""
    nodes = [
        h.make_node("Conv", ["input", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        h.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        h.make_node("ConvTranspose", ["r1", "w2", "b2"], ["c2"], name="deconv", strides=[2, 2], kernel_shape=[2, 2]),
        h.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        h.make_node("GlobalAveragePool", ["r2"], ["p"], name="pool"),
        h.make_node("Flatten", ["p"], ["f"], name="flat"),
        h.make_node("Gemm", ["f", "w3", "b3"], ["output"], name="fc", transB=1),
    ]
    inits = [f32("w1", RNG.standard_normal((8, 3, 3, 3)) * 0.3), f32("b1", RNG.standard_normal(8) * 0.1),
             f32("w2", RNG.standard_normal((8, 4, 2, 2)) * 0.3), f32("b2", RNG.standard_normal(4) * 0.1),
             f32("w3", RNG.standard_normal((10, 4)) * 0.3), f32("b3", RNG.standard_normal(10) * 0.1)]
    g = h.make_graph(nodes, "tiny", [h.make_tensor_value_info("input", T.FLOAT, [batch, 3, 16, 16])],
                     [h.make_tensor_value_info("output", T.FLOAT, [batch, 10])], inits)
    model = h.make_model(g, opset_imports=[h.make_opsetid("", 18)])
    onnx.checker.check_model(model)
    return model


def qdq_model(zero_point, zp_type=T.INT8, scale=0.02, with_zp=True):
    """input → QuantizeLinear → DequantizeLinear → Relu → output, with the given zero point."""
    zp_inputs = ["zp"] if with_zp else []
    nodes = [h.make_node("QuantizeLinear", ["input", "scale", *zp_inputs], ["q"], name="act_q"),
             h.make_node("DequantizeLinear", ["q", "scale", *zp_inputs], ["dq"], name="act_dq"),
             h.make_node("Relu", ["dq"], ["output"], name="relu")]
    inits = [f32("scale", scale)]
    if with_zp:
        inits.append(h.make_tensor("zp", zp_type, [], [zero_point]))
    g = h.make_graph(nodes, "qdq", [h.make_tensor_value_info("input", T.FLOAT, [1, 4])],
                     [h.make_tensor_value_info("output", T.FLOAT, [1, 4])], inits)
    return h.make_model(g, opset_imports=[h.make_opsetid("", 18)])


def quantize(src: Path, dst: Path, quantize_bias: bool = False) -> Path:
    q = pytest.importorskip("onnxruntime.quantization")

    class Reader(q.CalibrationDataReader):
        def __init__(self):
            rng = np.random.default_rng(1)
            self.it = iter([{"input": rng.standard_normal((1, 3, 16, 16)).astype(np.float32)} for _ in range(8)])

        def get_next(self):
            return next(self.it, None)

    q.quantize_static(str(src), str(dst), Reader(), quant_format=q.QuantFormat.QDQ,
                      activation_type=q.QuantType.QInt8, weight_type=q.QuantType.QInt8, per_channel=True,
                      extra_options={"ActivationSymmetric": True, "WeightSymmetric": True,
                                     "QuantizeBias": quantize_bias})
    return dst


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("trt") / "tiny.onnx"
    onnx.save(tiny_model(), str(path))
    return path


@pytest.fixture(scope="module")
def zoo_onnx(tmp_path_factory) -> Path:
    """mobilenet_v3_large exported and simplified at 1x3x224x224, as the pipeline does."""
    pytest.importorskip("onnxscript")
    pytest.importorskip("onnxsim")
    from edgekit.models import create_model, get_spec
    from exporters.onnx.exporter import export_onnx
    from exporters.onnx.simplify import simplify

    work = tmp_path_factory.mktemp("zoo")
    spec = get_spec("mobilenet_v3_large")
    raw = export_onnx(create_model("mobilenet_v3_large").eval(), (spec.input,), work / "m.onnx")
    return simplify(raw, work / "m.sim.onnx").path


# -- lint: real graphs are clean -----------------------------------------------------------------
@pytest.mark.parametrize("version", ["10", "11"])
def test_focus_model_onnx_has_no_lint_errors(zoo_onnx, version):
    problems = lint_onnx(zoo_onnx, version)
    assert errors(problems) == []
    assert onnx.load(str(zoo_onnx)).graph.node  # the graph really was linted


def test_ort_symmetric_per_channel_qdq_has_no_lint_errors(tiny_onnx, tmp_path):
    qdq = quantize(tiny_onnx, tmp_path / "tiny.qdq.onnx")
    model = onnx.load(str(qdq))
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("DequantizeLinear") >= 3 and "QuantizeLinear" in ops
    axes = {n.name: n.attribute[0].i for n in model.graph.node if n.op_type == "DequantizeLinear" and n.attribute}
    assert axes.get("w2_DequantizeLinear") == 1  # ConvTranspose weights: output-channel axis 1
    assert lint_onnx(qdq) == []


def test_fp16_cast_graph_has_no_lint_errors():
    w = nh.from_array((RNG.standard_normal((4, 3, 3, 3)) * 0.3).astype(np.float16), "w")
    nodes = [h.make_node("Cast", ["input"], ["x16"], name="to_fp16", to=T.FLOAT16),
             h.make_node("Conv", ["x16", "w"], ["c"], name="conv"),
             h.make_node("Relu", ["c"], ["r"], name="relu"),
             h.make_node("Cast", ["r"], ["output"], name="to_fp32", to=T.FLOAT)]
    g = h.make_graph(nodes, "fp16", [h.make_tensor_value_info("input", T.FLOAT, [1, 3, 8, 8])],
                     [h.make_tensor_value_info("output", T.FLOAT, [1, 4, 6, 6])], [w])
    model = h.make_model(g, opset_imports=[h.make_opsetid("", 18)])
    assert lint_onnx(model) == []
    # the same graph in float64 is linted too: DOUBLE is cast down (warning), not rejected
    nodes[0] = h.make_node("Cast", ["input"], ["x16"], name="to_fp64", to=T.DOUBLE)
    g64 = h.make_graph(nodes, "fp64", g.input, g.output,
                       [nh.from_array(nh.to_array(w).astype(np.float64), "w")])
    problems = lint_onnx(h.make_model(g64, opset_imports=[h.make_opsetid("", 18)]))
    assert errors(problems) == [] and any("DOUBLE" in p["message"] for p in problems)


def test_ort_default_quantized_bias_is_an_error(tiny_onnx, tmp_path):
    qdq = quantize(tiny_onnx, tmp_path / "tiny.bias.onnx", quantize_bias=True)
    errs = errors(lint_onnx(qdq))
    assert errs and all("INT32 DequantizeLinear" in e["message"] for e in errs)
    assert {e["node"] for e in errs} >= {"b1_DequantizeLinear"}


# -- lint: each rule names the node ---------------------------------------------------------------
def test_unsupported_operator_is_an_error_naming_the_node():
    g = h.make_graph([h.make_node("Relu", ["input"], ["r"], name="relu"),
                      h.make_node("Det", ["r"], ["output"], name="my_det")], "det",
                     [h.make_tensor_value_info("input", T.FLOAT, [1, 3, 3])],
                     [h.make_tensor_value_info("output", T.FLOAT, [1])])
    problems = lint_onnx(h.make_model(g, opset_imports=[h.make_opsetid("", 18)]))
    errs = errors(problems)
    assert [(e["node"], e["op"]) for e in errs] == [("my_det", "Det")]
    assert "not supported" in errs[0]["message"]


def test_custom_domain_operator_is_an_error():
    g = h.make_graph([h.make_node("FusedConv", ["input"], ["output"], name="fused", domain="com.microsoft")], "c",
                     [h.make_tensor_value_info("input", T.FLOAT, [1, 3, 8, 8])],
                     [h.make_tensor_value_info("output", T.FLOAT, [1, 3, 8, 8])])
    model = h.make_model(g, opset_imports=[h.make_opsetid("", 18), h.make_opsetid("com.microsoft", 1)])
    assert [e["node"] for e in errors(lint_onnx(model))] == ["fused"]


def test_asymmetric_qdq_is_an_error_naming_the_node():
    errs = errors(lint_onnx(qdq_model(zero_point=5)))
    assert {e["node"] for e in errs} == {"act_q", "act_dq"}
    assert all("zero point" in e["message"] and "symmetric" in e["message"] for e in errs)
    assert errors(lint_onnx(qdq_model(zero_point=0))) == []


@pytest.mark.parametrize("kwargs", [{"zero_point": 0, "zp_type": T.UINT8}, {"zero_point": 128, "zp_type": T.UINT8},
                                    {"zero_point": 0, "with_zp": False}])
def test_uint8_qdq_is_an_error(kwargs):
    errs = errors(lint_onnx(qdq_model(**kwargs)))
    assert any(e["node"] == "act_q" and "UINT8" in e["message"] for e in errs)


def test_non_positive_scale_is_an_error():
    errs = errors(lint_onnx(qdq_model(zero_point=0, scale=-0.5)))
    assert {e["node"] for e in errs} == {"act_q", "act_dq"} and "positive" in errs[0]["message"]


def _weight_dq_model(axis: int | None, n_scales: int, per_act: bool = False):
    w = np.clip(np.round(RNG.standard_normal((8, 3, 3, 3)) * 40), -127, 127).astype(np.int8)
    attrs = {} if axis is None else {"axis": axis}
    act = ["input", "as", "az"]
    nodes = [h.make_node("QuantizeLinear", act, ["xq"], name="in_q", **({"axis": 1} if per_act else {})),
             h.make_node("DequantizeLinear", ["xq", "as", "az"], ["x"], name="in_dq", **({"axis": 1} if per_act else {})),
             h.make_node("DequantizeLinear", ["w", "ws", "wz"], ["wf"], name="w_dq", **attrs),
             h.make_node("Conv", ["x", "wf"], ["output"], name="conv")]
    a_n = 3 if per_act else 1
    inits = [nh.from_array(w, "w"), f32("ws", np.full(n_scales, 0.01)), nh.from_array(np.zeros(n_scales, np.int8), "wz"),
             f32("as", np.full(a_n, 0.02) if per_act else 0.02),
             nh.from_array(np.zeros(a_n, np.int8) if per_act else np.int8(0), "az")]
    g = h.make_graph(nodes, "wq", [h.make_tensor_value_info("input", T.FLOAT, [1, 3, 8, 8])],
                     [h.make_tensor_value_info("output", T.FLOAT, [1, 8, 6, 6])], inits)
    return h.make_model(g, opset_imports=[h.make_opsetid("", 18)])


def test_per_channel_axis_rules_for_conv_weights():
    assert errors(lint_onnx(_weight_dq_model(axis=0, n_scales=8))) == []
    wrong = errors(lint_onnx(_weight_dq_model(axis=1, n_scales=3)))
    assert [e["node"] for e in wrong] == ["w_dq"] and "output-channel axis 0" in wrong[0]["message"]
    implicit = errors(lint_onnx(_weight_dq_model(axis=None, n_scales=8)))
    assert [e["node"] for e in implicit] == ["w_dq"] and "explicit axis" in implicit[0]["message"]
    count = errors(lint_onnx(_weight_dq_model(axis=0, n_scales=4)))
    assert any("one scale per channel" in e["message"] for e in count)


def test_per_channel_activation_quantization_is_an_error():
    errs = errors(lint_onnx(_weight_dq_model(axis=0, n_scales=8, per_act=True)))
    assert {e["node"] for e in errs} == {"in_q", "in_dq"} and "activation" in errs[0]["message"]


def test_quantize_without_dequantize_is_an_error():
    nodes = [h.make_node("QuantizeLinear", ["input", "s", "z"], ["q"], name="lonely_q"),
             h.make_node("Cast", ["q"], ["output"], name="cast", to=T.FLOAT)]
    g = h.make_graph(nodes, "q", [h.make_tensor_value_info("input", T.FLOAT, [1, 4])],
                     [h.make_tensor_value_info("output", T.FLOAT, [1, 4])],
                     [f32("s", 0.1), h.make_tensor("z", T.INT8, [], [0])])
    errs = errors(lint_onnx(h.make_model(g, opset_imports=[h.make_opsetid("", 18)])))
    assert any(e["node"] == "lonely_q" and "followed by a DequantizeLinear" in e["message"] for e in errs)


def test_only_the_batch_dimension_may_be_symbolic():
    assert errors(lint_onnx(tiny_model(batch="N"))) == []
    g = h.make_graph([h.make_node("Relu", ["input"], ["output"], name="relu")], "dyn",
                     [h.make_tensor_value_info("input", T.FLOAT, ["N", 3, "H", 16])],
                     [h.make_tensor_value_info("output", T.FLOAT, ["N", 3, "H", 16])])
    errs = errors(lint_onnx(h.make_model(g, opset_imports=[h.make_opsetid("", 18)])))
    assert [e["node"] for e in errs] == ["input"] and "dimension 2" in errs[0]["message"]


def test_documented_restrictions():
    nodes = [h.make_node("MaxPool", ["input"], ["m"], name="dilated_pool", kernel_shape=[2, 2], dilations=[2, 2]),
             h.make_node("Resize", ["m", "", "sc"], ["output"], name="cubic", mode="cubic")]
    g = h.make_graph(nodes, "r", [h.make_tensor_value_info("input", T.FLOAT, [1, 3, 8, 8])],
                     [h.make_tensor_value_info("output", T.FLOAT, [1, 3, 12, 12])], [f32("sc", [1, 1, 2, 2])])
    errs = errors(lint_onnx(h.make_model(g, opset_imports=[h.make_opsetid("", 18)])))
    assert {e["node"] for e in errs} == {"dilated_pool", "cubic"}


def test_table_version_selection():
    assert (table_version(None), table_version("10.3.0"), table_version("11.5.1"), table_version("12.0")) == \
        ("10", "10", "11", "11")
    with pytest.raises(UsageError):
        lint_onnx(tiny_model(), "9")


# -- no removed API ------------------------------------------------------------------------------
def test_exporter_source_uses_no_api_removed_in_tensorrt_11():
    files = sorted((ROOT / "exporters" / "tensorrt").glob("*.py"))
    assert {f.name for f in files} >= {"exporter.py", "runner.py", "lint.py", "ops.py", "qdq.py", "graph.py"}
    removed = ("BuilderFlag.INT8", "BuilderFlag.FP16", "int8_calibrator", "IInt8", "platform_has_fast_")
    found = [(f.name, r) for f in files for r in removed if r in f.read_text()]
    assert found == []


# -- check() and options -------------------------------------------------------------------------
def test_check_without_tensorrt_names_it_and_nvidia_index():
    if importlib.util.find_spec("tensorrt") is not None:
        pytest.skip("the tensorrt package is installed here")
    target = TensorRTTarget()
    with pytest.raises(MissingDependencyError) as info:
        target.check(ExportRequest(model="mobilenet_v3_large", target="tensorrt", precision="int8"))
    assert "tensorrt" in str(info.value) and "pypi.nvidia.com" in info.value.hint
    assert "--dry-run" in info.value.hint  # what the user can still do on this machine
    assert info.value.exit_code == 2
    # a dry run stops before the engine build: nothing GPU-related is checked
    target.check(ExportRequest(model="mobilenet_v3_large", target="tensorrt", precision="int8", dry_run=True))
    ok, why = target.available()
    assert not ok and "tensorrt" in why


def test_profile_and_option_validation():
    t = TensorRTTarget()
    req = lambda **kw: ExportRequest(model="m", target="tensorrt", dry_run=True, **kw)  # noqa: E731
    assert t.profile(req()) is None
    assert t.profile(req(dynamic_batch=True, batch=4)) == {"min": 1, "opt": 4, "max": 32}
    assert t.profile(req(dynamic_batch=True, options={"min_batch": 2, "max_batch": 8})) == {"min": 2, "opt": 2, "max": 8}
    for bad in (req(options={"max_batch": 8}), req(dynamic_batch=True, options={"min_batch": 9, "max_batch": 8}),
                req(options={"workspace": 0})):
        with pytest.raises(UsageError):
            t.check(bad)
    assert t.tolerance_overrides(req(options={"tf32": True}))["max_abs"] > 1e-4
    assert t.tolerance_overrides(req()) == {}


def test_target_registry_and_aliases():
    from edgekit.targets import get_target

    t = get_target("trt")
    assert isinstance(t, TensorRTTarget) and isinstance(get_target("tensorrt-engine"), TensorRTTarget)
    assert {o.flag for o in t.options} == {"--workspace", "--tf32", "--timing-cache", "--min-batch", "--opt-batch",
                                          "--max-batch"}


# -- CLI -----------------------------------------------------------------------------------------
def test_cli_lint_exit_codes_and_table(tmp_path, tiny_onnx, capsys):
    from edgekit.cli.main import main

    bad = tmp_path / "asym.onnx"
    onnx.save(qdq_model(zero_point=5), str(bad))
    assert main(["lint", str(bad), "--target", "tensorrt", "--trt-version", "11"]) == 2
    out = capsys.readouterr().out
    assert "act_q" in out and "2 error(s)" in out
    assert main(["lint", str(tiny_onnx)]) == 0
    # an artifact folder: its newest ONNX stage is linted
    folder = tmp_path / "artifact"
    folder.mkdir()
    onnx.save(qdq_model(zero_point=5), str(folder / "m.int8.onnx"))
    stage = Artifact(path=folder / "m.int8.onnx", stage="qdq", format="onnx", precision="int8", target="onnx",
                     inputs=(InputSpec("input", (1, 4)),))
    Manifest(model={"name": "m"}, request={}, stages=[stage]).write(folder)
    assert main(["lint", str(folder)]) == 2
    assert main(["lint", str(tmp_path / "missing.onnx")]) == 2


# -- on a GPU: build, run, compare ---------------------------------------------------------------
def _gpu_ready() -> bool:
    if importlib.util.find_spec("tensorrt") is None:
        return False
    try:
        import tensorrt  # noqa: F401
    except Exception:  # noqa: BLE001
        return False
    from exporters.tensorrt.runner import cuda_device

    return cuda_device() is not None


def _build(source: Artifact, work: Path, precision: str, **kw) -> Artifact:
    request = ExportRequest(model="tiny", target="tensorrt", precision=precision, **kw)
    TensorRTTarget().check(request)
    ctx = make_context(request, inputs=source.inputs, source=source, heldout=[], stem=f"tiny-{precision}")
    return TensorRTTarget().export(ctx, work)


@pytest.mark.gpu
@pytest.mark.tensorrt
def test_engine_build_and_parity_on_gpu(tmp_path, tiny_onnx):
    if not _gpu_ready():
        pytest.skip(GPU_SKIP)
    from edgekit.compare import cosine
    from exporters.onnx.runner import OrtRunner

    spec = (InputSpec("input", (1, 3, 16, 16)),)
    fp32_src = Artifact(path=tiny_onnx, stage="simplified", format="onnx", precision="fp32", target="onnx",
                        inputs=spec)
    qdq_src = Artifact(path=quantize(tiny_onnx, tmp_path / "tiny.qdq.onnx"), stage="qdq", format="onnx",
                       precision="int8", target="onnx", inputs=spec)
    feeds = [{"input": np.random.default_rng(i).standard_normal((1, 3, 16, 16)).astype(np.float32)} for i in range(8)]
    cache = tmp_path / "timing.cache"
    for src, prec in ((fp32_src, "fp32"), (qdq_src, "int8")):
        engine = _build(src, tmp_path, prec, options={"timing_cache": cache})
        assert engine.path.suffix == ".engine" and engine.meta["tf32"] is False and engine.meta["strongly_typed"]
        assert engine.meta["compute_capability"] and engine.meta["tensorrt_version"]
        with OrtRunner(src.path) as ref, TensorRTTarget().open(engine) as run:
            pairs = [(ref.infer(f)["output"], run.infer(f)["output"]) for f in feeds]
        if prec == "fp32":
            assert max(float(np.abs(a - b).max()) for a, b in pairs) < 1e-4  # TF32 off
        else:
            assert min(cosine(a, b) for a, b in pairs) > 0.99
    assert cache.is_file() and cache.stat().st_size > 0
    stale = Artifact(path=engine.path, stage="tensorrt", format="tensorrt-engine", precision="int8",
                     target="tensorrt", inputs=spec, meta={**engine.meta, "tensorrt_version": "0.0.0"})
    with pytest.raises(ArtifactError, match="TensorRT 0.0.0"):
        with TensorRTTarget().open(stale):
            pass


@pytest.mark.gpu
@pytest.mark.tensorrt
def test_dynamic_batch_profile_on_gpu(tmp_path):
    if not _gpu_ready():
        pytest.skip(GPU_SKIP)
    from exporters.onnx.runner import OrtRunner

    path = tmp_path / "dyn.onnx"
    onnx.save(tiny_model(batch="N"), str(path))
    spec = (InputSpec("input", (1, 3, 16, 16), dynamic_batch=True),)
    src = Artifact(path=path, stage="simplified", format="onnx", precision="fp32", target="onnx", inputs=spec)
    engine = _build(src, tmp_path, "fp32", dynamic_batch=True,
                    options={"min_batch": 1, "max_batch": 4, "timing_cache": tmp_path / "t.cache"})
    assert engine.meta["profile"]["max"] == 4
    x = np.random.default_rng(3).standard_normal((3, 3, 16, 16)).astype(np.float32)
    with OrtRunner(path) as ref, TensorRTTarget().open(engine) as run:
        assert np.abs(ref.infer({"input": x})["output"] - run.infer({"input": x})["output"]).max() < 1e-4
        with pytest.raises(ArtifactError, match="profile"):
            run.infer({"input": np.zeros((5, 3, 16, 16), np.float32)})
