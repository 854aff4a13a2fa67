"""Every option is honoured or refused (issue 18): bad numbers, devices, opsets, resource
limits, the right blame for user models, and 16-bit calibration images.

Refusals run the CLI in-process (``edgekit.cli.main.main``): exit code, one error line plus
an optional hint, no traceback, nothing written. The few honoured cases run lenet5 with
--no-bench and a handful of samples.
"""
from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgekit.cli.main import main
from edgekit.errors import UsageError
from edgekit.specs import MAX_DIM, TOLERANCE_KEYS, TOLERANCE_RANGES, check_tolerances, parse_shape, parse_tolerances
from tests.conftest import run_edgekit


def _refused(capsys, argv, *needles):
    """Run the CLI in-process; assert exit 2 with 'error: ...' (+ 'hint: ...') and nothing more."""
    rc = main(["-q", *argv])
    err = capsys.readouterr().err
    lines = [ln for ln in err.strip().splitlines() if not ln.startswith("warning:")]
    assert rc == 2, err
    assert lines and lines[0].startswith("error: "), err
    assert len(lines) == 1 or (len(lines) == 2 and lines[1].startswith("hint: ")), err
    assert "Traceback" not in err
    for n in needles:
        assert n in err, err
    return err


def _nothing_written(tmp_path, keep=()):
    left = sorted(p.name for p in tmp_path.iterdir() if p.name not in keep)
    assert left == [], left


# -- bad numbers, devices and opsets: refused at parse time or in check(), before any work ------------
EXPORT_BAD = [
    (["--samples", "0"], "--samples must be at least 1, got 0"),
    (["--samples", "-1"], "--samples must be at least 1, got -1"),
    (["--samples", "many"], "--samples expects an integer"),
    (["--samples", "1000000000000"], "needs ~4.1 PB of feeds"),
    (["--calib-samples", "0"], "--calib-samples must be at least 1, got 0"),
    (["--calib-samples", "1000000000000"], "--calib-samples 1000000000000 at 1x1x32x32: edgekit takes at most"),
    (["--calib-samples", "900000", "--input-shape", "1x1x2000x2000"], "--calib-samples 900000 at 1x1x2000x2000 needs"),
    (["--threads", "0"], "--threads must be at least 1, got 0"),
    (["--threads", "-5"], "--threads must be at least 1, got -5"),
    (["--batch", "0"], "--batch must be at least 1"),
    (["--tol", "max_abs=nan"], "max_abs=nan is not a finite number"),
    (["--tol", "cosine=-inf"], "cosine=-inf is not a finite number"),
    (["--tol", "cosine=1.5"], "cosine=1.5 is out of range"),
    (["--tol", "top1=-0.1"], "top1=-0.1 is out of range"),
    (["--tol", "max_abs=-1"], "max_abs=-1 is out of range"),
    (["--tol", "speed=1"], "unknown tolerance 'speed'"),
    (["--tol", "cosine"], "expected METRIC=VALUE"),
    (["--opset", "0"], "--opset must be at least 1"),
    (["--opset", "99"], "ONNX opset 99 is not supported"),
    (["--device", "GPU"], "target 'onnx' cannot run on device 'GPU' here"),
    (["--device", "NPU", "--fp16"], "cannot run on device 'NPU'"),
    (["--target", "tensorrt", "--device", "CPU", "--dry-run"], "bad TensorRT device 'CPU'"),
    (["--input-shape", "1x1x0x32"], "expected 4 positive dimensions"),
    (["--input-shape", "1x1x32"], "expected 4 positive dimensions"),
    (["--input-shape", "1x1x3000000x32"], "is not an image"),
    (["--input-shape", "1x1x100000x100000"], "input 1x1x100000x100000 is too large"),
    (["--input-shape", "1x1x8x8"], "lenet5 cannot run on input 1x1x8x8: "),
    (["--guard-seconds", "0"], "--guard-seconds must be > 0 and <= 600, got 0"),
    (["--guard-seconds", "nan"], "--guard-seconds must be a finite number"),
]


@pytest.mark.parametrize("extra,needle", EXPORT_BAD, ids=[" ".join(a) for a, _ in EXPORT_BAD])
def test_export_refuses_bad_options(tmp_path, capsys, extra, needle):
    out = tmp_path / "out"
    _refused(capsys, ["export", "lenet5", "--no-bench", "--out", str(out), *extra], needle)
    _nothing_written(tmp_path)


@pytest.mark.parametrize("value,needle", [("soon", "$EDGEKIT_GUARD_SECONDS expects a number, got 'soon'"),
                                          ("-1", "$EDGEKIT_GUARD_SECONDS must be > 0 and <= 600, got -1")])
def test_a_bad_guard_seconds_variable_is_refused_before_any_work(tmp_path, capsys, monkeypatch, value, needle):
    monkeypatch.setenv("EDGEKIT_GUARD_SECONDS", value)
    _refused(capsys, ["export", "lenet5", "--int8", "--no-bench", "--out", str(tmp_path / "out")], needle)
    _nothing_written(tmp_path)


def test_samples_estimate_names_the_memory(tmp_path, capsys):
    err = _refused(capsys, ["export", "lenet5", "--samples", "1000000000000", "--out", str(tmp_path / "o")])
    assert "at 1x1x32x32" in err and "available" in err


def test_kernel_larger_than_input_names_the_smallest_size(tmp_path, capsys):
    err = _refused(capsys, ["export", "lenet5", "--input-shape", "1x1x8x8", "--out", str(tmp_path / "o")])
    assert "Kernel size" in err and "--input-shape 1x1x32x32" in err  # lenet5's Linear needs exactly 32


OTHER_BAD = [
    (["parity", "ART", "--samples", "0"], "--samples must be at least 1"),
    (["parity", "ART", "--threads", "0"], "--threads must be at least 1"),
    (["matrix", "lenet5", "--samples", "-3"], "--samples must be at least 1"),
    (["matrix", "lenet5", "--batch", "0"], "--batch must be at least 1"),
    (["matrix", "lenet5", "--threads", "-1"], "--threads must be at least 1"),
    (["matrix", "lenet5", "--seconds", "nan"], "--seconds must be a finite number"),
    (["matrix", "lenet5", "--seconds", "0"], "--seconds must be > 0"),
    (["bench", "ART", "--seconds", "inf"], "--seconds must be a finite number"),
    (["bench", "ART", "--iters", "0"], "--iters must be at least 1"),
    (["bench", "ART", "--warmup", "-1"], "--warmup must be at least 0"),
    (["bench", "ART", "--batch", "0"], "--batch must be at least 1"),
]


@pytest.mark.parametrize("argv,needle", OTHER_BAD, ids=[" ".join(a) for a, _ in OTHER_BAD])
def test_parity_matrix_bench_refuse_bad_numbers(tmp_path, capsys, argv, needle):
    argv = [str(tmp_path / "art") if a == "ART" else a for a in argv]
    _refused(capsys, [*argv, *(["--out", str(tmp_path / "m")] if argv[0] == "matrix" else [])], needle)
    _nothing_written(tmp_path)


def test_opset_is_refused_when_no_onnx_is_written(tmp_path):
    pytest.importorskip("coremltools", reason="the Core ML target needs coremltools")
    # in a subprocess: coremltools' import-time logging handlers outlive pytest's captured streams
    proc = run_edgekit("export", "lenet5", "--target", "coreml", "--opset", "17", "--out", str(tmp_path / "o"))
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.startswith(("error:", "hint:"))]
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert lines[0].startswith("error: --opset applies to ONNX"), proc.stderr
    _nothing_written(tmp_path)


# -- --opset reaches the file ---------------------------------------------------------------------------
def _file_opset(path):
    import onnx

    return next(o.version for o in onnx.load(str(path)).opset_import if o.domain in ("", "ai.onnx"))


def test_opset_is_written_as_asked(tmp_path, capsys):
    out = tmp_path / "o"
    rc = main(["-q", "export", "lenet5", "--opset", "17", "--no-bench", "--samples", "2", "--out", str(out)])
    assert rc == 0, capsys.readouterr().err
    m = json.loads((out / "artifact.json").read_text())
    onnx_stages = [s for s in m["stages"] if s["format"] == "onnx"]
    assert onnx_stages
    for s in onnx_stages:
        assert _file_opset(out / s["path"]) == 17
    assert m["stages"][0]["meta"]["opset"] == 17


def test_unreachable_opset_is_refused_not_rewritten(tmp_path, capsys):
    # torch's exporter writes opset 18 and cannot convert lenet5's Reshape down to 13: it used to
    # write 18 while the console and the manifest said 13
    out = tmp_path / "o"
    _refused(capsys, ["export", "lenet5", "--opset", "13", "--no-bench", "--out", str(out)],
             "--opset 13", "Reshape", "use --opset 18")
    _nothing_written(tmp_path)


# -- --device belongs to the target ---------------------------------------------------------------------
def test_device_sets_are_declared_per_target():
    from edgekit.targets import get_target

    onnx = get_target("onnx")
    import onnxruntime as ort

    assert ("CUDA" in onnx.devices()) == ("CUDAExecutionProvider" in ort.get_available_providers())
    assert onnx.check_device("cpu") == "cpu"
    with pytest.raises(UsageError, match="cannot run on device 'GPU'"):
        onnx.check_device("GPU")
    for name in ("executorch", "ncnn"):
        try:
            t = get_target(name)
        except Exception:  # noqa: BLE001 - target not importable here
            continue
        assert t.devices() == ("CPU",)


def test_bench_and_parity_refuse_a_device_the_artifact_cannot_use(tmp_path, capsys):
    art = tmp_path / "art"
    assert main(["-q", "export", "lenet5", "--no-parity", "--no-bench", "--out", str(art)]) == 0
    capsys.readouterr()
    before = sorted(p.name for p in art.iterdir())
    report = tmp_path / "bench.json"
    _refused(capsys, ["bench", str(art), "--device", "GPU", "--iters", "2", "--json", str(report)],
             "target 'onnx' cannot run on device 'GPU'")
    assert not report.exists()
    _refused(capsys, ["parity", str(art), "--device", "GPU", "--samples", "2"], "cannot run on device 'GPU'")
    assert sorted(p.name for p in art.iterdir()) == before


def test_reference_onnx_stages_of_another_target_run_on_cpu():
    from edgekit.artifact import Artifact
    from edgekit.contracts import ExportRequest
    from edgekit.pipeline import stage_device

    req = ExportRequest(model="lenet5", target="openvino", device="GPU")
    onnx_stage = Artifact(path=__file__, stage="onnx", format="onnx", precision="fp32", target="onnx", inputs=())
    ir = Artifact(path=__file__, stage="openvino", format="openvino-ir", precision="fp32", target="openvino", inputs=())
    assert stage_device(onnx_stage, req) is None and stage_device(ir, req) == "GPU"
    assert stage_device(onnx_stage, ExportRequest(model="lenet5", device="CPU")) == "CPU"


# -- resource limits ------------------------------------------------------------------------------------
def test_memory_check_before_allocation():
    from edgekit.resources import check_memory, feeds_estimate

    est = feeds_estimate((1, 3, 224, 224), 200)
    assert est["feeds"] == 4 * 3 * 224 * 224 * (200 + 256)
    check_memory((1, 3, 224, 224), 200, available=64 * 10**9)  # fits
    with pytest.raises(UsageError, match=r"--samples 100000 at 1x3x224x224 needs ~.* this machine has 2.0 GB"):
        check_memory((1, 3, 224, 224), 100_000, available=2 * 10**9)
    with pytest.raises(UsageError, match="input 1x3x4096x4096 is too large"):
        check_memory((1, 3, 4096, 4096), 32, available=2 * 10**9, what=None)


def test_api_request_numbers_are_checked_like_the_cli():
    from edgekit.contracts import ExportRequest
    from edgekit.pipeline import resolve

    for kw, needle in (({"samples": 0}, "--samples"), ({"threads": -2}, "--threads"), ({"batch": 0}, "--batch"),
                       ({"tolerance": {"cosine": float("nan")}}, "cosine")):
        with pytest.raises(UsageError, match=needle):
            resolve(ExportRequest(model="lenet5", **kw))


# -- property tests: the parsers give a value or a UsageError, nothing else ------------------------------
@settings(max_examples=300, deadline=None)
@given(st.text(max_size=40))
def test_parse_shape_never_raises_anything_but_usage_error(text):
    try:
        shape = parse_shape(text)
    except UsageError:
        return
    assert len(shape) == 4 and all(isinstance(d, int) and 1 <= d <= MAX_DIM for d in shape)


@settings(max_examples=200, deadline=None)
@given(st.tuples(*[st.integers(1, MAX_DIM)] * 4), st.sampled_from(["x", "X", ","]))
def test_parse_shape_round_trips(shape, sep):
    assert parse_shape(sep.join(map(str, shape))) == shape


@settings(max_examples=300, deadline=None)
@given(st.lists(st.text(max_size=20), max_size=4))
def test_tolerance_parser_never_raises_anything_but_usage_error(items):
    try:
        tol = parse_tolerances(items)
    except UsageError:
        return
    for k, v in tol.items():
        lo, hi = TOLERANCE_RANGES[k]
        assert k in TOLERANCE_KEYS and math.isfinite(v) and lo <= v <= hi


@st.composite
def _valid_tolerance(draw):
    key = draw(st.sampled_from(TOLERANCE_KEYS))
    lo, hi = TOLERANCE_RANGES[key]
    return key, draw(st.floats(lo, min(hi, 1e6), allow_nan=False, allow_infinity=False))


@settings(max_examples=200, deadline=None)
@given(st.lists(_valid_tolerance(), max_size=4))
def test_tolerance_parser_round_trips(pairs):
    expected = dict(pairs)
    assert parse_tolerances([f"{k}={v!r}" for k, v in pairs]) == expected
    assert check_tolerances(expected) == expected


@given(st.sampled_from(TOLERANCE_KEYS), st.sampled_from([float("nan"), float("inf"), float("-inf"), "x", None]))
def test_check_tolerances_refuses_non_finite(key, value):
    with pytest.raises(UsageError):
        check_tolerances({key: value})


# -- the right blame for user models --------------------------------------------------------------------
USER_CODE = """
import sys
import torch
from torch import nn

class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x):
        return self.conv(x).mean((2, 3))

class Broken(Net):
    def forward(self, x):
        raise ValueError("my forward is broken\\nsecond line")

def raises():
    raise ValueError("bad config value\\nsecond line")

def returns_tuple():
    return Net(), 3

def returns_dict():
    return {"model": Net()}

def returns_class():
    return Net

def exits():
    sys.exit(0)

def broken_forward():
    return Broken()
"""

BLAME = [
    ("raises", "your model raised ValueError: bad config value"),
    ("returns_tuple", "your factory 'returns_tuple' returned a tuple, expected a torch.nn.Module"),
    ("returns_dict", "your factory 'returns_dict' returned a dict, expected a torch.nn.Module"),
    ("returns_class", "returned a type, expected a torch.nn.Module"),
    ("exits", "your model code called sys.exit(0)"),
    ("broken_forward", "your model raised ValueError: my forward is broken"),
]


@pytest.mark.parametrize("factory,needle", BLAME, ids=[f for f, _ in BLAME])
def test_user_model_errors_are_blamed_on_the_user(tmp_path, capsys, factory, needle):
    src = tmp_path / "user_blame_model.py"
    src.write_text(USER_CODE)
    err = _refused(capsys, ["export", f"{src}:{factory}", "--input-shape", "1x3x16x16", "--no-bench",
                            "--samples", "2", "--out", str(tmp_path / "o")], needle)
    assert "second line" not in err and "please report" not in err
    _nothing_written(tmp_path, keep={src.name, "__pycache__"})


def test_sys_exit_at_import_is_an_error(tmp_path, capsys):
    src = tmp_path / "user_exit_model.py"
    src.write_text("import sys\nsys.exit(3)\n")
    _refused(capsys, ["export", f"{src}:factory", "--out", str(tmp_path / "o")], "your model code called sys.exit(3)")
    _nothing_written(tmp_path, keep={src.name, "__pycache__"})


# -- calibration images: 16-bit PNGs are rescaled, with one warning -------------------------------------
def test_16bit_png_is_scaled_not_clipped(tmp_path):
    from PIL import Image

    from edgekit.images import load_image
    from edgekit.specs import Preprocess

    a = np.full((40, 40), 32896, np.uint16)  # 32896 / 257 = 128: mid-grey
    Image.fromarray(a).save(tmp_path / "grey16.png")
    pre = Preprocess(resize=32, crop=32, mean=(0.0,), std=(1.0,), channels=1)
    x = load_image(tmp_path / "grey16.png", pre, (32, 32))
    assert x.shape == (1, 32, 32)
    np.testing.assert_allclose(x, 128 / 255, atol=1e-6)  # clipped, it read 1.0 (white)
    rgb = load_image(tmp_path / "grey16.png", Preprocess(resize=32, crop=32, mean=(0, 0, 0), std=(1, 1, 1)),
                     (32, 32))
    np.testing.assert_allclose(rgb, 128 / 255, atol=1e-6)


def test_calibration_folder_gets_one_warning_naming_converted_and_skipped(tmp_path):
    from PIL import Image

    from edgekit.feeds import photo_feeds
    from edgekit.specs import InputSpec, Preprocess

    for i in range(4):
        Image.fromarray(np.full((40, 40), 4000 * (i + 1), np.uint16)).save(tmp_path / f"scan{i}.png")
    for i in range(3):
        Image.fromarray(np.full((40, 40, 3), 60 * i, np.uint8)).save(tmp_path / f"photo{i}.png")
    (tmp_path / "broken.png").write_bytes(b"not a png")
    Image.fromarray(np.zeros((1, 40), np.uint8)).save(tmp_path / "sliver.png")
    pre = Preprocess(resize=32, crop=32, mean=(0.0,), std=(1.0,), channels=1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        feeds = photo_feeds(pre, InputSpec(shape=(1, 1, 32, 32)), folder=tmp_path, heldout=4, calib=4)
        rows = [f["input"] for f in feeds.heldout] + [f["input"] for f in feeds.calib]
    msgs = [str(w.message) for w in caught]
    assert len(msgs) == 1, msgs
    assert "converted 4 16-bit image(s)" in msgs[0] and all(f"scan{i}.png" in msgs[0] for i in range(4))
    assert "skipped 2" in msgs[0] and "broken.png" in msgs[0] and "sliver.png" in msgs[0]
    assert sorted(p.rsplit("/", 1)[-1] for p in feeds.skipped) == ["broken.png", "sliver.png"]
    # the 16-bit scans read as their grey levels (4000k/65535), not as white
    values = {round(float(r.mean()), 3) for r in rows}
    assert values & {round(4000 * (i + 1) / 257 / 255, 3) for i in range(4)}
    assert max(values) < 0.99
