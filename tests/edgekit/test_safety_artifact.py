"""Artifacts and reports are data, never code (issue 18, DESIGN.md §8 "Safety").

* ``edgekit parity`` and ``edgekit ci`` never import a file because a manifest names it; a
  user model is re-imported only when the user names it with ``--model``, and a changed
  file is reported (its sha256 is recorded at export).
* A manifest is schema-checked whole: every stage inside the artifact folder, every stage
  with a sha256; anything else is one line, exit 2, nothing written.
* ``report merge`` on a binary file or rows of the wrong types: one-line schema error.
* ``edgekit ci``: an error cell is a JUnit error and never exit 0; numeric settings finite.
"""
from __future__ import annotations

import hashlib
import json
import math
import shutil
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgekit.artifact import Manifest
from edgekit.errors import ArtifactError, EdgekitError
from tests.conftest import run_edgekit

pytest.importorskip("onnxruntime")

HOSTILE = """
from pathlib import Path
Path({marker!r}).write_text("this file was imported")
import torch
def factory():
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.LazyLinear(10))
"""

USER_MODEL = """
import torch
from torch import nn

def tiny():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(4, 10)).eval()
"""


def cli(*argv: str) -> int:
    from edgekit.cli.main import main

    return main(["-q", *argv])


def assert_one_line_error(err: str, *needles: str) -> None:
    """stderr holds exactly one 'error:' line (plus its hint), no traceback, no 'please report it'."""
    lines = [ln for ln in err.strip().splitlines() if not ln.startswith("warning:")]
    assert lines and lines[0].startswith("error: "), err
    assert all(ln.startswith("hint: ") for ln in lines[1:]) and len(lines) <= 2, err
    assert "Traceback" not in err and "unexpected" not in err and "please report" not in err, err
    for n in needles:
        assert n in err, err


def listing(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@pytest.fixture(scope="module")
def lenet(tmp_path_factory) -> Path:
    """A real artifact folder: lenet5 → ONNX → simplified ONNX, parity checked, no latency."""
    out = tmp_path_factory.mktemp("lenet") / "a"
    assert cli("export", "lenet5", "--target", "onnx", "--out", str(out), "--no-bench", "--samples", "2") == 0
    return out


def copy_artifact(src: Path, dest: Path, edit=None) -> Path:
    shutil.copytree(src, dest)
    if edit is not None:
        m = json.loads((dest / "artifact.json").read_text())
        m = edit(m, dest)
        (dest / "artifact.json").write_text(m if isinstance(m, str) else json.dumps(m))
    return dest


def _set(path: str, value):
    """An edit that sets manifest[path] (dotted; integers index lists) to ``value``."""
    def edit(m, _dest):
        keys = [int(k) if k.isdigit() else k for k in path.split(".")]
        node = m
        for k in keys[:-1]:
            node = node[k]
        node[keys[-1]] = value
        return m
    return edit


def _drop(key: str):
    def edit(m, _dest):
        del m[key]
        return m
    return edit


def _outside(m, dest: Path):
    """Stage 0 points at an identical copy of its file outside the folder (same sha256)."""
    elsewhere = dest.parent / "elsewhere"
    elsewhere.mkdir()
    shutil.copy(dest / m["stages"][0]["path"], elsewhere / "x.onnx")
    m["stages"][0]["path"] = "../elsewhere/x.onnx"
    return m


def _absolute(m, dest: Path):
    m["stages"][0]["path"] = str((dest / m["stages"][0]["path"]).resolve())
    return m


def _symlink(m, dest: Path):
    elsewhere = dest.parent / "elsewhere"
    elsewhere.mkdir()
    shutil.copy(dest / m["stages"][0]["path"], elsewhere / "x.onnx")
    (dest / "link.onnx").symlink_to(elsewhere / "x.onnx")
    m["stages"][0]["path"] = "link.onnx"
    return m


def _empty_sha_and_tampered(m, dest: Path):
    """The reproduction of issue 18: sha256 '' and a modified (still valid) ONNX passed with exit 0."""
    shutil.copy(dest / m["stages"][1]["path"], dest / m["stages"][0]["path"])
    m["stages"][0]["sha256"] = ""
    return m


BAD_MANIFESTS = [
    ("json-list", lambda m, d: "[]", "not an edgekit manifest"),
    ("binary", None, "not a readable manifest"),  # bytes 0-255, written below
    ("no-model", _drop("model"), "'model' is missing"),
    ("model-not-object", _set("model", "lenet5"), "'model' must be an object"),
    ("stages-not-list", _set("stages", {"onnx": "lenet5.onnx"}), "'stages' must be a list"),
    ("stage-not-object", _set("stages", [1]), "stages[0] must be an object"),
    ("stage-unknown-field", _set("stages.0.exec", "rm -rf ~"), "unknown manifest field 'exec'"),
    ("empty-sha256", _empty_sha_and_tampered, "empty sha256"),
    ("sha256-null", _set("stages.0.sha256", None), "'sha256' must be a string"),
    ("path-dotdot", _outside, "is not inside the artifact folder"),
    ("path-absolute", _absolute, "is not inside the artifact folder"),
    ("path-symlink-out", _symlink, "leads outside the artifact folder"),
    ("inputs-shape-strings", _set("stages.0.inputs.0.shape", ["a", 3]), "list of positive integers"),
    ("input-shape-not-list", _set("model.input_shape", "1x1x32x32"), "'model.input_shape'"),
    ("target-number", _set("request.target", 5), "'request.target'"),
    ("tolerance-nan", _set("request.tolerance", {"max_abs": "nan"}), "request.tolerance.max_abs must be a finite"),
    ("tolerance-unknown", _set("request.tolerance", {"__class__": 1}), "unknown metric '__class__'"),
    ("precision-unknown", _set("request.precision", "int4"), "'request.precision' is 'int4'"),
    ("stage-precision", _set("stages.1.precision", "fp64"), "stages[1].precision is 'fp64'"),
    ("user-ref", _set("model.user_ref", "net.py:factory"), "pass --model net.py:factory"),
    ("user-ref-in-name", _set("model.name", "os:system"), "pass --model os:system"),
    ("stage-name-escape", _set("stages.0.stage", "onnx\n\x1b[2Jok"), "'stage' holds control characters"),
    ("user-ref-newline", _set("model.user_ref", "a.py:f\nerror: fine"), "must be a one-line string"),
    ("wrong-schema", _set("schema", "edgekit.artifact/99"), "unknown manifest schema"),
]


@pytest.mark.parametrize("name, edit, message", BAD_MANIFESTS, ids=[b[0] for b in BAD_MANIFESTS])
def test_parity_refuses_a_bad_manifest_in_one_line(lenet, tmp_path, capsys, name, edit, message):
    dest = copy_artifact(lenet, tmp_path / "a", edit)
    if edit is None:
        (dest / "artifact.json").write_bytes(bytes(range(256)) * 4)
    before = listing(tmp_path)
    assert cli("parity", str(dest), "--samples", "2") == 2
    assert_one_line_error(capsys.readouterr().err, message)
    assert listing(tmp_path) == before  # nothing written, nothing deleted


def test_the_unedited_copy_passes(lenet, tmp_path, capsys):
    """The table above fails for its edit, not for the copy: the same folder unedited passes."""
    dest = copy_artifact(lenet, tmp_path / "a")
    assert cli("parity", str(dest), "--samples", "2") == 0
    assert "parity: PASS" in capsys.readouterr().out


def hostile_artifact(lenet: Path, where: Path) -> tuple[Path, Path]:
    """An artifact whose manifest names a Python file that writes a marker when imported."""
    marker = where / "MARKER"
    evil = where / "evil.py"
    evil.write_text(HOSTILE.format(marker=str(marker)))
    dest = copy_artifact(lenet, where / "hostile", _set("model.user_ref", f"{evil}:factory"))
    return dest, marker


def test_hostile_artifact_is_never_imported_by_parity(lenet, tmp_path):
    dest, marker = hostile_artifact(lenet, tmp_path)
    proc = run_edgekit("parity", str(dest))
    assert proc.returncode == 2, proc.stderr
    assert_one_line_error(proc.stderr, "made from a user model", f"pass --model {tmp_path / 'evil.py'}:factory")
    assert not marker.exists()
    # the manifest's name field is no back door either
    m = json.loads((dest / "artifact.json").read_text())
    m["model"].update(user_ref=None, name=f"{tmp_path / 'evil.py'}:factory")
    (dest / "artifact.json").write_text(json.dumps(m))
    proc = run_edgekit("parity", str(dest))
    assert proc.returncode == 2 and "made from a user model" in proc.stderr, proc.stderr
    assert not marker.exists()


def test_hostile_artifact_is_never_imported_by_ci(lenet, tmp_path):
    """A hostile artifact where `edgekit ci` writes its cell's artifact: ci exports its own model,
    reads the old manifest as data at most, and never imports what it names."""
    out = tmp_path / "ci-out"
    (out / "artifacts").mkdir(parents=True)
    dest, marker = hostile_artifact(lenet, tmp_path)
    shutil.move(dest, out / "artifacts" / "lenet5-onnx-fp32")
    cfg = tmp_path / "edgekit.toml"
    cfg.write_text(f'models = ["lenet5"]\ntargets = ["onnx"]\nsamples = 2\nout = "{out}"\n')
    proc = run_edgekit("ci", "--config", str(cfg))
    assert proc.returncode in (0, 2), proc.stderr  # replaced (0) or refused as not ours (2): never imported
    assert "Traceback" not in proc.stderr
    assert not marker.exists()


def test_user_model_recheck_needs_model_and_reports_a_changed_file(tmp_path, capsys):
    src = tmp_path / "net.py"
    src.write_text(USER_MODEL)
    out = tmp_path / "a"
    assert cli("export", f"{src}:tiny", "--input-shape", "1x3x16x16", "--out", str(out), "--no-bench",
               "--samples", "2") == 0
    m = json.loads((out / "artifact.json").read_text())
    assert m["model"]["user_ref_sha256"] == hashlib.sha256(src.read_bytes()).hexdigest()
    capsys.readouterr()
    assert cli("parity", str(out), "--samples", "2") == 2
    assert_one_line_error(capsys.readouterr().err, f"pass --model {src}:tiny")
    assert cli("parity", str(out), "--samples", "2", "--model", f"{src}:tiny") == 0
    captured = capsys.readouterr()
    assert "parity: PASS" in captured.out and "changed" not in captured.err
    src.write_text(USER_MODEL + "\n# edited after the export\n")
    assert cli("parity", str(out), "--samples", "2", "--model", f"{src}:tiny") == 0
    err = capsys.readouterr().err
    assert f"model file of {src}:tiny changed since the artifact was exported" in err, err


# ---------------------------------------------------------------- report merge

def _report() -> dict:
    from edgekit.report.schema import make_row, new_report

    dev = {"name": "box", "cpu": {"model": "x", "arch": "x86_64", "usable_threads": 2, "isa": ["avx2"]},
           "os": {"platform": "linux"}, "python": {"version": "3.11"}, "gpus": []}
    rows = [make_row(model="lenet5", target="onnx", precision="fp32", device_id="d1", stage="sim", size_mb=0.2,
                     input_shape=[1, 1, 32, 32], latency={"p50_ms": 0.1, "p90_ms": 0.2},
                     parity={"max_abs": 1e-7, "cosine": 1.0, "sqnr_db": "inf", "top1": 1.0, "failures": []}),
            make_row(model="lenet5", target="torch", precision="fp32", device_id="d1", baseline=True,
                     input_shape=[1, 1, 32, 32], latency={"p50_ms": 0.3, "p90_ms": 0.4})]
    return json.loads(json.dumps(new_report("bench", rows, {"d1": dev})))


def _row(field, value):
    def edit(r):
        r["rows"][0][field] = value
        return r
    return edit


BAD_REPORTS = [
    ("binary", None, "is not readable JSON"),
    ("json-list", lambda r: [r], "not an edgekit report"),
    ("row-number", lambda r: {**r, "rows": [5]}, "row 0 must be an object"),
    ("model-number", _row("model", 3), "'model' must be a string"),
    ("latency-string", _row("latency", "fast"), "'latency' must be an object or null"),
    ("p50-string", _row("latency", {"p50_ms": "1 ms"}), "'latency.p50_ms' must be a number"),
    ("shape-string", _row("input_shape", "1x3"), "'input_shape' must be a list"),
    ("flags-numbers", _row("flags", [1]), "'flags' must be a list of strings"),
    ("status-unknown", _row("status", "great"), "bad status"),
    ("size-string", _row("size_mb", "big"), "'size_mb' must be"),
    ("cosine-string", _row("parity", {"cosine": "high"}), "'parity.cosine'"),
    ("devices-list", lambda r: {**r, "devices": []}, "'devices' is missing or not a dict"),
    ("device-threads", lambda r: {**r, "devices": {"d1": {"cpu": {"usable_threads": "two"}}}}, "cpu.usable_threads"),
    ("sources-strings", lambda r: {**r, "sources": ["x"]}, "'sources' must be a list of objects"),
]


@pytest.mark.parametrize("name, edit, message", BAD_REPORTS, ids=[b[0] for b in BAD_REPORTS])
def test_report_merge_refuses_a_bad_report_in_one_line(tmp_path, capsys, name, edit, message):
    good, bad = tmp_path / "good.json", tmp_path / "bad.json"
    good.write_text(json.dumps(_report()))
    if edit is None:
        bad.write_bytes(bytes(range(256)) * 8)
    else:
        bad.write_text(json.dumps(edit(_report())))
    before = listing(tmp_path)
    assert cli("report", "merge", str(good), str(bad), "-o", str(tmp_path / "merged")) == 2
    assert_one_line_error(capsys.readouterr().err, message)
    assert listing(tmp_path) == before


def test_report_merge_of_good_reports_still_works(tmp_path):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps(_report()))
    other = _report()
    other["devices"] = {"d2": other["devices"].pop("d1")}
    for r in other["rows"]:
        r["device_id"] = "d2"
    b.write_text(json.dumps(other))
    assert cli("report", "merge", str(a), str(b), "-o", str(tmp_path / "m"), "--json", "--md") == 0
    merged = json.loads((tmp_path / "m.json").read_text())
    assert len(merged["rows"]) == 4 and set(merged["devices"]) == {"d1", "d2"}
    onnx = next(r for r in merged["rows"] if r["target"] == "onnx" and r["device_id"] == "d2")
    assert onnx["speedup"] == pytest.approx(3.0)


# ---------------------------------------------------------------- ci numbers and errors

@pytest.mark.parametrize("line, message", [
    ("bench = true\nseconds = nan", "'seconds' must be a finite number above 0"),
    ("bench = true\nseconds = inf", "'seconds' must be a finite number above 0"),
    ("seconds = 0", "'seconds' must be a finite number above 0"),
    ("threads = 0", "'threads' must be a finite number above 0"),
    ("threads = -5", "'threads' must be a finite number above 0"),
    ("samples = 0", "'samples' must be a finite number above 0"),
    ("batch = -1", "'batch' must be a finite number above 0"),
    ("[tolerance.fp32]\nmax_abs = nan", "tolerance.fp32.max_abs must be a finite number"),
    ("[tolerance.fp32]\ncosine = -inf", "tolerance.fp32.cosine must be a finite number"),
])
def test_ci_refuses_non_finite_or_non_positive_numbers(tmp_path, capsys, line, message):
    cfg = tmp_path / "edgekit.toml"
    cfg.write_text(f'models = ["lenet5"]\nout = "out"\n{line}\n')
    assert cli("ci", "--config", str(cfg)) == 2
    assert_one_line_error(capsys.readouterr().err, message)
    assert listing(tmp_path) == ["edgekit.toml"]


def test_ci_error_cell_is_a_junit_error_and_never_exit_0(tmp_path):
    """The reproduction of issue 18 past the config check: a cell that cannot run (seconds = nan)
    made report.json say 'error' while JUnit had 0 errors and ci exited 0. The bench failed on it
    then; the export's own check of its latency-guard seconds refuses it first now."""
    from edgekit.ci import load_config, run_ci

    cfg_file = tmp_path / "edgekit.toml"
    cfg_file.write_text('models = ["lenet5"]\ntargets = ["onnx"]\nsamples = 2\nbench = true\nout = "out"\n')
    cfg = load_config(cfg_file)
    cfg.seconds = math.nan  # what the config check now refuses, forced past it
    report, code = run_ci(cfg)
    assert report["rows"][0]["status"] == "error"
    suite = ET.parse(cfg.out / "junit.xml").getroot().find("testsuite")
    assert suite.get("errors") == "1" and suite.get("failures") == "0"
    (tc,) = suite.findall("testcase")
    assert tc.find("error") is not None
    assert "export failed: --guard-seconds must be a finite number, got nan" in tc.find("error").get("message")
    assert code == 2


def test_junit_error_outranks_failure_and_counts_match():
    from edgekit.report.junit import Case, junit_xml

    xml = junit_xml([Case("a", "c", failure="parity", error="bench"), Case("b", "c", failure="parity"),
                     Case("c", "c", skipped="why")])
    suite = ET.fromstring(xml.split("\n", 1)[1]).find("testsuite")
    assert (suite.get("errors"), suite.get("failures"), suite.get("skipped")) == ("1", "1", "1")
    a, b, _ = suite.findall("testcase")
    assert a.find("failure") is None and "parity" in a.find("error").text
    assert b.find("failure") is not None


# ---------------------------------------------------------------- properties

JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
                    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=8), kids, max_size=4),
                    max_leaves=12)


def _paths(node, prefix=()):
    """Every (path) inside a JSON value, the root included."""
    yield prefix
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _paths(v, (*prefix, i))


def _replace(node, path, value):
    if not path:
        return value
    node[path[0]] = _replace(node[path[0]], path[1:], value)
    return node


def _read_and_plan(tmp: Path, data) -> None:
    """What `edgekit parity` does with a manifest before it builds anything."""
    import argparse

    from edgekit.compare import tolerance_for
    from edgekit.console import Console
    from edgekit.recheck import _request_from_manifest

    (tmp / "artifact.json").write_text(json.dumps(data))
    m = Manifest.read(tmp)
    m.verify()
    args = argparse.Namespace(model=None, weights=None, calib=None, samples=None, threads=None, device=None)
    req = _request_from_manifest(m, args, Console(quiet=True))
    for stage in m.stages:  # the tolerances parity would build (pipeline.tolerance_fn)
        tolerance_for(stage.precision, {**stage.meta.get("tolerance", {}), **req.tolerance})


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=JSON)
def test_manifest_read_of_any_json_raises_only_artifact_error(data):
    with tempfile.TemporaryDirectory() as d:
        (Path(d) / "artifact.json").write_text(json.dumps(data))
        try:
            Manifest.read(Path(d))
        except ArtifactError as exc:
            assert "\n" not in exc.message


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(choice=st.data(), value=JSON)
def test_a_manifest_with_any_field_replaced_raises_only_edgekit_errors(lenet, choice, value):
    base = json.loads((lenet / "artifact.json").read_text())
    path = choice.draw(st.sampled_from(list(_paths(base))))
    data = _replace(json.loads(json.dumps(base)), path, value)
    with tempfile.TemporaryDirectory() as d:
        for f in lenet.iterdir():
            if f.name != "artifact.json":
                shutil.copy(f, d)
        try:
            _read_and_plan(Path(d), data)
        except EdgekitError as exc:
            assert "\n" not in exc.message


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(choice=st.data(), value=JSON)
def test_a_report_with_any_field_replaced_merges_or_raises_a_schema_error(choice, value):
    from edgekit.report.markdown import render_markdown
    from edgekit.report.merge import merge_reports
    from edgekit.report.schema import validate
    from edgekit.report.table import main_table, single_device_table

    base = _report()
    path = choice.draw(st.sampled_from(list(_paths(base))))
    data = _replace(base, path, value)
    try:
        rep = validate(data)
        single_device_table(rep)
        merged = merge_reports([rep, validate(_report())])
        main_table(merged)
        render_markdown(merged)
    except EdgekitError as exc:
        assert "\n" not in exc.message
