"""edgekit ci: edgekit.toml validation, JUnit XML, exit codes, a forced tolerance violation.

The exports are real (torch.onnx + ONNX Runtime parity) on a tiny user model so the
two runs stay within the test budget; the config checks need no export at all.
"""
from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from edgekit.ci import load_config  # noqa: E402
from edgekit.errors import ConfigError  # noqa: E402

from tests.conftest import ROOT  # noqa: E402

from tests.tiny import MODEL_SRC  # noqa: E402  (the shared tiny model)


def project(tmp_path: Path, extra: str = "") -> Path:
    (tmp_path / "models").mkdir(exist_ok=True)
    (tmp_path / "models" / "tiny.py").write_text(MODEL_SRC)
    cfg = tmp_path / "edgekit.toml"
    cfg.write_text(f'''
models = ["models/tiny.py:tiny"]
targets = ["onnx"]
precisions = ["fp32"]
input_shape = "1x3x32x32"
samples = 4
out = "build/edgekit"
{extra}
''')
    return cfg


def run_cli(*argv: str) -> int:
    from edgekit.cli.main import main

    return main(["-q", *argv])


def cases(junit: Path) -> list[ET.Element]:
    root = ET.parse(junit).getroot()
    assert root.tag == "testsuites"
    suite = root.find("testsuite")
    tcs = suite.findall("testcase")
    assert int(suite.get("tests")) == len(tcs)
    return tcs


def test_ci_passes_and_writes_junit(tmp_path, capsys):
    cfg = project(tmp_path)
    junit = tmp_path / "junit.xml"
    assert run_cli("ci", "--config", str(cfg), "--junit", str(junit)) == 0
    (tc,) = cases(junit)
    assert tc.get("name") == "models/tiny.py:tiny/onnx/fp32" and tc.get("classname") == "edgekit.parity.onnx"
    assert tc.find("failure") is None and tc.find("error") is None
    props = {p.get("name"): p.get("value") for p in tc.iter("property")}
    assert props["final_stage"] == "simplified" and float(props["simplified.max_abs"]) < 1e-4
    assert "PASS" in tc.find("system-out").text
    assert (tmp_path / "build" / "edgekit" / "report.json").is_file()
    assert "1/1 passed" in capsys.readouterr().out


def test_forced_tolerance_violation_exits_1_naming_model_target_stage_metric(tmp_path):
    cfg = project(tmp_path, "[tolerance.fp32]\nmax_abs = 1e-12\n")
    junit = tmp_path / "out.xml"
    assert run_cli("ci", "--config", str(cfg), "--junit", str(junit)) == 1
    (tc,) = cases(junit)
    fail = tc.find("failure")
    assert fail is not None
    msg = fail.get("message")
    assert "models/tiny.py:tiny" in msg and " onnx " in msg and "stage 'onnx'" in msg and "max_abs" in msg
    assert "> 1e-12" in msg
    suite = ET.parse(junit).getroot().find("testsuite")
    assert suite.get("failures") == "1" and suite.get("errors") == "0"


def test_trained_weights_carry_the_stability_yardstick_into_junit(tmp_path):
    """A checkpoint (trained weights) at FP16: the JUnit case also records how the FP32 reference
    scores against itself under ±½ pixel step of input noise (edgekit.stability)."""
    import importlib.util

    import torch

    cfg = project(tmp_path, '[model."models/tiny.py:tiny"]\nweights = "tiny.pt"\nprecisions = ["fp16"]\n')
    spec = importlib.util.spec_from_file_location("tiny_for_ci_yardstick", tmp_path / "models" / "tiny.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    torch.save(mod.tiny().state_dict(), tmp_path / "tiny.pt")
    junit = tmp_path / "junit.xml"
    code = run_cli("ci", "--config", str(cfg), "--junit", str(junit))
    suite = ET.parse(junit).getroot().find("testsuite")
    # exit 1 exactly when the JUnit case failed
    assert code == (1 if suite.get("failures") != "0" else 0) and suite.get("errors") == "0", code
    (tc,) = cases(junit)
    props = {p.get("name"): p.get("value") for p in tc.iter("property")}
    top1, n = float(props["reference_stability.top1"]), int(props.get("reference_stability.samples", 0) or 0)
    assert 0.0 <= top1 <= 1.0 and (n == 0 or abs(top1 * n - round(top1 * n)) < 1e-6), props
    assert 0.9 < float(props["reference_stability.cosine"]) <= 1.0 and float(props["reference_stability.sqnr_db"]) > 10
    assert "yardstick: FP32 reference vs itself" in tc.find("system-out").text


def test_unavailable_target_is_skipped_or_an_error(tmp_path):
    try:
        import tensorrt  # noqa: F401
        pytest.skip("tensorrt is installed here")
    except ImportError:
        pass
    cfg = project(tmp_path, "")
    text = cfg.read_text().replace('targets = ["onnx"]', 'targets = ["tensorrt"]')
    cfg.write_text(text + "skip_unavailable = true\n")
    junit = tmp_path / "j.xml"
    assert run_cli("ci", "--config", str(cfg), "--junit", str(junit)) == 0
    (tc,) = cases(junit)
    assert tc.find("skipped") is not None and "tensorrt" in tc.find("skipped").get("message")
    cfg.write_text(text)
    assert run_cli("ci", "--config", str(cfg), "--junit", str(junit)) == 2
    (tc,) = cases(junit)
    assert tc.find("error") is not None


@pytest.mark.parametrize("body, message", [
    ('models = ["mobilenet_v3_small"]\nprecision = ["fp32"]', "unknown key 'precision' (did you mean 'precisions'?)"),
    ('models = ["mobilenet_v3_smal"]', "did you mean 'mobilenet_v3_small'"),
    ('models = ["mobilenet_v3_small"]\ntargets = ["onnxx"]', "unknown target 'onnxx'"),
    ('models = ["mobilenet_v3_small"]\nprecisions = ["int4"]', "unknown precision 'int4'"),
    ('models = ["mobilenet_v3_small"]\n[tolerance.int8]\ncosin = 0.9', "unknown metric 'cosin'"),
    ('models = ["mobilenet_v3_small"]\n[tolerance.int8]\ncosine = "high"', "must be a number"),
    ('models = ["mobilenet_v3_small"]\ninput_shape = "224"', "bad input shape"),
    ('models = ["mobilenet_v3_small"]\n[model.resnet18]\nsamples = 4', "not in 'models'"),
    ('models = ["mobilenet_v3_small"]\ncalib = "no/such/dir"', "calibration folder not found"),
    ('models = "mobilenet_v3_small"', "'models' must be a list"),
    ('models = [', "not valid TOML"),
    ('models = ["resnet18"]\n[options.openvino]\nov_int8_weight = "paired"',
     "target 'openvino' has no option 'ov_int8_weight' (did you mean 'ov_int8_weights'?)"),
    ('models = ["resnet18"]\n[options.openvino]\nov_int8_weights = "half"', "'half' is not one of auto, paired, full"),
    ('models = ["resnet18"]\n[options.openvino]\nov_guard_seconds = "long"', "must be a number, got str"),
    ('models = ["resnet18"]\n[options.onnxx]\nx = 1', "unknown target 'onnxx'"),
    ('models = ["resnet18"]\noptions = {openvino = "paired"}', "options.openvino must be a table"),
    ('models = ["resnet18"]\n[options.openvino]\nov_int8_weights = "paired"',
     "[options.openvino] is set, but no model is exported to 'openvino'"),
    ('models = ["resnet18"]\ntargets = ["onnx", "openvino"]\n[model.resnet18]\ntargets = ["onnx"]\n'
     '[model.resnet18.options.openvino]\nov_int8_weights = "full"', "no model is exported to 'openvino'"),
])
def test_config_errors_are_exit_2(tmp_path, body, message, capsys):
    cfg = tmp_path / "edgekit.toml"
    cfg.write_text(body + "\n")
    with pytest.raises(ConfigError) as exc:
        load_config(cfg)
    assert message in str(exc.value) and exc.value.exit_code == 2
    assert run_cli("ci", "--config", str(cfg)) == 2
    assert message.split(" (")[0] in capsys.readouterr().err


def test_config_calib_may_be_a_folder_or_an_array_file(tmp_path):
    (tmp_path / "photos").mkdir()
    np.save(tmp_path / "rows.npy", np.zeros((4, 3, 8, 8), np.float32))
    (tmp_path / "notes.txt").write_text("x")
    for calib, ok in (("photos", True), ("rows.npy", True), ("notes.txt", False)):
        cfg = tmp_path / "edgekit.toml"
        cfg.write_text(f'models = ["mobilenet_v3_small"]\ncalib = "{calib}"\n')
        if ok:
            assert load_config(cfg).cells[0].calib == tmp_path / calib
        else:
            with pytest.raises(ConfigError, match="calibration folder not found"):
                load_config(cfg)


def test_missing_project_file_is_exit_2(tmp_path, capsys):
    assert run_cli("ci", "--config", str(tmp_path / "edgekit.toml")) == 2
    assert "project file not found" in capsys.readouterr().err


def test_per_precision_and_per_model_tolerances_merge(tmp_path):
    cfg = tmp_path / "edgekit.toml"
    cfg.write_text('''
models = ["mobilenet_v3", "shufflenet_v2_x1_0"]
targets = ["onnx", "openvino"]
precisions = ["fp32", "int8"]
[tolerance.int8]
cosine = 0.99
top1 = 0.95
[model.mobilenet_v3]
input_shape = "1x3x96x96"
precisions = ["int8"]
[model.mobilenet_v3.tolerance.int8]
top1 = 0.9
''')
    c = load_config(cfg)
    names = [cell.name for cell in c.cells]
    assert names == ["mobilenet_v3_large/onnx/int8", "mobilenet_v3_large/openvino/int8",
                     "shufflenet_v2_x1_0/onnx/fp32", "shufflenet_v2_x1_0/onnx/int8",
                     "shufflenet_v2_x1_0/openvino/fp32", "shufflenet_v2_x1_0/openvino/int8"]
    assert c.cells[0].tolerance == {"cosine": 0.99, "top1": 0.9} and c.cells[0].input_shape == (1, 3, 96, 96)
    assert c.cells[2].tolerance == {} and c.cells[3].tolerance == {"cosine": 0.99, "top1": 0.95}
    assert c.out == (tmp_path / "edgekit-ci").resolve()


def test_target_options_reach_their_own_targets_requests(tmp_path):
    """``[options.<target>]`` is what ``edgekit export --target <target> --<option>`` takes: it goes into
    that target's cells (and their export requests) only; a model's own table overrides it."""
    from edgekit.cells import cell_request

    cfg = tmp_path / "edgekit.toml"
    cfg.write_text('''
models = ["mobilenet_v3", "resnet18"]
targets = ["onnx", "openvino"]
precisions = ["int8"]
[options.openvino]
ov-int8-weights = "paired"
ov_guard_seconds = 1
[model.resnet18.options.openvino]
ov_int8_weights = "full"
''')
    cells = {cell.name: cell for cell in load_config(cfg).cells}
    assert cells["mobilenet_v3_large/openvino/int8"].options == {"ov_int8_weights": "paired", "ov_guard_seconds": 1.0}
    assert cells["resnet18/openvino/int8"].options == {"ov_int8_weights": "full", "ov_guard_seconds": 1.0}
    assert cells["mobilenet_v3_large/onnx/int8"].options == {} == cells["resnet18/onnx/int8"].options
    req = cell_request(cells["resnet18/openvino/int8"], tmp_path / "out")
    from edgekit.targets import get_target

    assert get_target("openvino").settings(req).ov_int8_weights == "full"


def test_example_project_file_in_docs_is_valid():
    c = load_config(ROOT / "docs" / "edgekit.example.toml")
    assert c.cells and all(cell.target in ("onnx", "openvino", "tensorrt", "coreml") for cell in c.cells)


def test_pyproject_tool_table(tmp_path):
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "x"\n[tool.edgekit]\nmodels = ["resnet18"]\n')
    c = load_config(tmp_path / "pyproject.toml")
    assert [cell.name for cell in c.cells] == ["resnet18/onnx/fp32"]
