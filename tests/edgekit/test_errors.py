"""edgekit.errors.backend_errors: a backend's exception becomes one actionable line (issue 22)."""
import pytest

from edgekit.artifact import Artifact
from edgekit.errors import CalibrationError, ExportError, backend_errors


def test_a_backend_exception_becomes_an_export_error_with_its_type_and_first_line():
    with pytest.raises(ExportError) as info:
        with backend_errors("coreml-int8"):
            raise ValueError("\x1b[31mshape mismatch\x1b[0m in op conv_3\nlong internal trace ...")
    err = info.value
    assert err.stage == "coreml-int8"
    assert str(err) == ("coreml-int8 stage failed: ValueError: shape mismatch in op conv_3 "
                        "(rerun with --debug for the full trace)")
    assert isinstance(err.__cause__, ValueError)  # kept for --debug


def test_edgekit_errors_pass_through_unchanged():
    original = CalibrationError("no images in calib/", hint="add photos")
    with pytest.raises(CalibrationError) as info:
        with backend_errors("executorch-int8"):
            raise original
    assert info.value is original


def test_what_and_hint_are_the_callers():
    with pytest.raises(ExportError) as info:
        with backend_errors("openvino", "nncf.quantize failed", hint=None, with_type=False):
            raise RuntimeError("dataset is empty")
    assert str(info.value) == "openvino stage failed: nncf.quantize failed: dataset is empty"


def test_the_simplifier_reports_a_corrupt_onnx_in_one_line(tmp_path):
    from exporters.onnx.simplify import simplify

    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a protobuf at all")
    with pytest.raises(ExportError) as info:
        simplify(Artifact(bad, "onnx", "onnx", "fp32", "onnx", ()), tmp_path / "out.onnx")
    msg = str(info.value)
    assert msg.startswith("simplify stage failed: onnxsim failed: ") and "\n" not in msg
    assert msg.endswith("(rerun with --no-simplify to skip this stage)")
    assert not (tmp_path / "out.onnx").exists()
