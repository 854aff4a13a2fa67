"""edgekit matrix: real export + parity + bench per cell, one failing cell does not stop
the rest, reuse of identical cells, the three report files.

One zoo model at 96x96 (mobilenet_v3_small, ONNX FP32) plus a user model whose ONNX
export really fails (data-dependent Python control flow cannot be traced by
torch.export). Fast bench settings; no assertion on speed.
"""
from __future__ import annotations

import json

import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")
pytest.importorskip("matplotlib")

from edgekit.errors import EdgekitError, UnknownTargetError  # noqa: E402
from edgekit.matrix import MatrixConfig, exit_code, resolve_targets, run_matrix  # noqa: E402

BAD_MODEL = '''
import torch
from torch import nn


class Branchy(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 10)

    def forward(self, x):
        y = x.mean(dim=(2, 3))
        if float(y.sum()) > 0:  # data-dependent Python branch: torch.export cannot trace it
            y = y * 2
        return self.fc(y)


def branchy():
    return Branchy().eval()
'''


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("matrix")
    (root / "bad.py").write_text(BAD_MODEL)
    cfg = MatrixConfig(models=[f"{root / 'bad.py'}:branchy", "mobilenet_v3_small"], targets=["onnx"],
                       precisions=["fp32"], out=root / "out", input_shape=(1, 3, 96, 96), seconds=0.1, warmup=2,
                       samples=4, threads=1)
    return cfg, run_matrix(cfg, quiet=True)


def _row(report, model, target):
    return next(r for r in report["rows"] if r["model"] == model and r["target"] == target)


def test_every_cell_has_a_row_and_failures_are_contained(first_run):
    _, rep = first_run
    assert rep["schema"] == "edgekit.report/1" and rep["kind"] == "matrix"
    cells = {(r["model"], r["target"], r["precision"]): r["status"] for r in rep["rows"]}
    assert cells == {("branchy", "torch", "fp32"): "ok", ("branchy", "onnx", "fp32"): "error",
                     ("mobilenet_v3_small", "torch", "fp32"): "ok", ("mobilenet_v3_small", "onnx", "fp32"): "ok"}
    bad = _row(rep, "branchy", "onnx")
    assert "onnx stage failed" in bad["error"] and bad["latency"] is None
    assert bad["input_shape"] == [1, 3, 96, 96]  # lines up with the same cell measured elsewhere
    assert exit_code(rep) == 2


def test_good_cell_has_parity_size_latency_and_speedup(first_run):
    _, rep = first_run
    row, base = _row(rep, "mobilenet_v3_small", "onnx"), _row(rep, "mobilenet_v3_small", "torch")
    assert row["input_shape"] == base["input_shape"] == [1, 3, 96, 96]
    assert row["parity"]["stage"] == "simplified" and row["parity"]["all_passed"]
    assert row["parity"]["max_abs"] < 1e-4 and row["parity"]["cosine"] > 0.99999
    assert 5.0 < row["size_mb"] < 15.0  # 2.54 M float32 parameters
    assert row["latency"]["iterations"] >= 5 and row["latency"]["p50_ms"] <= row["latency"]["p90_ms"]
    pb = row["paired_baseline"]  # timed interleaved with torch eager: the speed-up comes from this pair
    assert pb["torch_p50_ms"] > 0 and pb["p50_ms"] > 0 and pb["rounds"] == 10 and pb["speedup"] > 0
    assert row["speedup"] == pytest.approx(pb["speedup"])
    assert base.get("paired_baseline") is None
    assert not row["reused"]


def test_second_run_reuses_identical_cells(first_run):
    cfg, rep = first_run
    again = run_matrix(cfg, quiet=True)
    row = _row(again, "mobilenet_v3_small", "onnx")
    assert row["reused"] and row["status"] == "ok"
    assert row["parity"]["max_abs"] == _row(rep, "mobilenet_v3_small", "onnx")["parity"]["max_abs"]
    assert _row(again, "branchy", "onnx")["status"] == "error"  # failures are retried, never cached
    cfg2 = MatrixConfig(**{**cfg.__dict__, "tolerance": {"max_abs": 1e-3}, "models": ["mobilenet_v3_small"]})
    from edgekit.matrix import _Index, _request

    folder = cfg.out / "artifacts" / "mobilenet_v3_small-onnx-fp32"
    idx = _Index(cfg.out)
    entry = idx.data["mobilenet_v3_small-onnx-fp32"]
    # a different request (here: a tolerance) must not reuse the cell
    assert idx.reusable(folder.name, folder, _request(cfg2, "mobilenet_v3_small", "onnx", "fp32", folder),
                        entry["weights"], entry["versions"]) is None
    assert idx.reusable(folder.name, folder, _request(cfg, "mobilenet_v3_small", "onnx", "fp32", folder),
                        "0" * 64, entry["versions"]) is None


def test_cli_writes_json_markdown_html(first_run, capsys):
    from edgekit.cli.main import main

    cfg, _ = first_run
    code = main(["-q", "matrix", "mobilenet_v3_small", "--targets", "onnx", "--precisions", "fp32",
                 "--input-shape", "1x3x96x96", "--seconds", "0.1", "--warmup", "2", "--samples", "4",
                 "--threads", "1", "--out", str(cfg.out)])
    assert code == 0
    out = capsys.readouterr().out
    assert "mobilenet_v3_small" in out and "Speed-up" in out and "reused" in out
    rep = json.loads((cfg.out / "matrix.json").read_text())
    assert [r["target"] for r in rep["rows"]] == ["torch", "onnx"]
    md = (cfg.out / "matrix.md").read_text()
    assert md.count("| mobilenet_v3_small |") == 2
    html = (cfg.out / "matrix.html").read_text()
    assert html.count('src="data:image/png;base64,') == 3


def test_unknown_target_fails_before_any_work(tmp_path):
    with pytest.raises(UnknownTargetError, match="did you mean 'onnx'"):
        run_matrix(MatrixConfig(models=["mobilenet_v3_small"], targets=["onnxx"], out=tmp_path), quiet=True)
    assert not (tmp_path / "matrix-index.json").exists()


def test_named_unavailable_target_is_kept_with_its_reason():
    # ('all' would import every backend here, which is slow; it keeps only the available ones)
    named, why = resolve_targets(["onnx", "tensorrt"])
    assert named == ["onnx", "tensorrt"]
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        assert "tensorrt" in why  # reported as a skipped cell, with the reason


def test_unknown_precision_is_a_usage_error(tmp_path):
    with pytest.raises(EdgekitError, match="unknown precision"):
        run_matrix(MatrixConfig(models=["mobilenet_v3_small"], targets=["onnx"], precisions=["int4"],
                                out=tmp_path), quiet=True)


def test_int8_weights_reach_their_own_targets_cells_only(tmp_path):
    """``edgekit matrix --ov-int8-weights paired --ort-int8-weights full``: an export node with VNNI can
    build the OpenVINO cells for x86 devices without it (docs/fleet.md). Each option goes into its
    target's requests, where the target reads it, and into no other target's; without it the target's
    auto decides."""
    from edgekit.cli.main import build_parser
    from edgekit.cli.matrix import target_options
    from edgekit.matrix import _request
    from edgekit.targets import get_target
    from exporters.openvino.exporter import wants_paired_weights

    args = build_parser().parse_args(["matrix", "mobilenet_v3_small", "--ov-int8-weights", "paired",
                                      "--ort-int8-weights", "full", "--out", str(tmp_path)])
    assert target_options(args) == {"openvino": {"ov_int8_weights": "paired"}, "onnx": {"ort_int8_weights": "full"}}
    cfg = MatrixConfig(models=["mobilenet_v3_small"], out=tmp_path, target_options=target_options(args))
    ov = _request(cfg, "mobilenet_v3_small", "openvino", "int8", tmp_path / "a")
    onnx = _request(cfg, "mobilenet_v3_small", "onnx", "int8", tmp_path / "b")
    et = _request(cfg, "mobilenet_v3_small", "executorch", "int8", tmp_path / "e")
    assert ov.options == {"ov_int8_weights": "paired"} and wants_paired_weights(ov)
    assert onnx.options == {"ort_int8_weights": "full"}
    assert get_target("onnx").calibration_options_for(onnx) == {}          # full: [-127, 127] whatever the CPU
    assert et.options == {}
    assert cfg.settings()["target_options"]["openvino"] == {"ov_int8_weights": "paired"}
    full = _request(MatrixConfig(out=tmp_path, target_options={"openvino": {"ov_int8_weights": "full"}}),
                    "mobilenet_v3_small", "openvino", "int8", tmp_path / "c")
    assert not wants_paired_weights(full)
    assert _request(MatrixConfig(out=tmp_path), "mobilenet_v3_small", "openvino", "int8", tmp_path / "d").options == {}
    assert target_options(build_parser().parse_args(["matrix", "--out", str(tmp_path)])) == {}
