"""Reports: schema, derived checks, Markdown, self-contained HTML with real PNG plots,
merging reports from two devices (the second fingerprint is fabricated), the CLI.

The measured report comes from a real torch + ONNX Runtime run of a tiny conv net.
"""
from __future__ import annotations

import base64
import copy
import io
import json
import shutil
import subprocess
from html.parser import HTMLParser

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("matplotlib")
torch = pytest.importorskip("torch")
from PIL import Image  # noqa: E402

from edgekit.bench.device import device_id_of, fingerprint  # noqa: E402
from edgekit.bench.run import BenchSettings, bench_artifact, bench_torch  # noqa: E402
from edgekit.errors import ArtifactError  # noqa: E402
from edgekit.report import load_report, make_row, new_report, save_report  # noqa: E402
from edgekit.report.html import render_html  # noqa: E402
from edgekit.report.markdown import render_markdown  # noqa: E402
from edgekit.report.merge import merge_reports  # noqa: E402
from tests.conftest import wait_for_background  # noqa: E402
from edgekit.report.schema import SCHEMA, dumps, finalize  # noqa: E402
from edgekit.report.table import ms, per_device_table  # noqa: E402

from tests.tiny import tiny_model, write_tiny  # noqa: E402  (the shared tiny model)


@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    """A bench report measured here: torch eager baseline + an ONNX artifact with real parity."""
    from edgekit.artifact import Manifest
    from edgekit.bench.timing import synthetic_feed
    from edgekit.compare import tolerance_for
    from edgekit.contracts import ExportRequest
    from edgekit.parity import run_parity
    from edgekit.specs import InputSpec
    from edgekit.torch_runner import TorchRunner
    from exporters.onnx.exporter import OrtRunner, export_onnx

    folder = tmp_path_factory.mktemp("report") / "tiny-onnx-fp32"
    folder.mkdir()
    ref = write_tiny(folder.parent)
    model = tiny_model()
    inputs = (InputSpec(shape=(1, 3, 32, 32)),)
    art = export_onnx(model, inputs, folder / "tiny.onnx")
    comps = run_parity(TorchRunner(model, inputs), [(art, OrtRunner(art.path, art.inputs))],
                       [synthetic_feed(inputs, seed=s) for s in range(3)], lambda a: tolerance_for("fp32"))
    req = ExportRequest(model=ref, target="onnx", out=folder, input_shape=(1, 3, 32, 32))
    Manifest(model={"name": "tiny", "user_ref": ref}, request=req.to_dict(), stages=[art],
             parity=[c.to_dict() for c in comps]).write(folder)
    fp = fingerprint()
    s = BenchSettings(warmup=1, iters=8, threads=1)
    rows = [bench_torch(ref, s, fp["device_id"], input_shape=(1, 3, 32, 32)),
            bench_artifact(folder, s, fp["device_id"])]
    assert [r["status"] for r in rows] == ["ok", "ok"], rows
    return new_report("bench", rows, {fp["device_id"]: fp}, s.to_dict())


def other_device(report, factor=3.0):
    """The same rows as if measured on another machine, ``factor`` times slower."""
    other = copy.deepcopy(report)
    (dev, fp), = other["devices"].items()
    fp = {**fp, "cpu": {**fp["cpu"], "model": "ARM Cortex-A76", "arch": "aarch64", "isa": ["asimd", "neon"]},
          "name": "Raspberry Pi 5", "memory_gb": 8.0}
    fp["device_id"] = device_id_of(fp)
    other["devices"] = {fp["device_id"]: fp}
    for r in other["rows"]:
        r["device_id"] = fp["device_id"]
        for k in ("p50_ms", "p90_ms", "p99_ms", "mean_ms"):
            r["latency"][k] *= factor
    return finalize(other)


class _Imgs(HTMLParser):
    def __init__(self):
        super().__init__()
        self.srcs, self.external = [], []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "img":
            self.srcs.append(a.get("src", ""))
        for k in ("src", "href"):
            if a.get(k, "").startswith(("http:", "https:", "//")):
                self.external.append(a[k])


def decoded_pngs(html: str) -> list[Image.Image]:
    p = _Imgs()
    p.feed(html)
    assert not p.external, f"HTML is not self-contained: {p.external}"
    out = []
    for src in p.srcs:
        assert src.startswith("data:image/png;base64,"), src[:40]
        img = Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1], validate=True)))
        img.load()
        assert img.format == "PNG"
        out.append(img)
    return out


def test_report_schema_roundtrip(measured, tmp_path):
    path = save_report(measured, tmp_path / "r.json")
    back = load_report(path)
    assert back["schema"] == SCHEMA == "edgekit.report/1"
    assert back["rows"] == json.loads(dumps(measured))["rows"]
    torch_row, onnx_row = back["rows"]
    assert torch_row["baseline"] and torch_row["speedup"] == pytest.approx(1.0)
    assert onnx_row["speedup"] == pytest.approx(torch_row["latency"]["p50_ms"] / onnx_row["latency"]["p50_ms"],
                                                rel=1e-2)
    assert onnx_row["parity"]["max_abs"] < 1e-4 and onnx_row["parity"]["cosine"] > 0.99999


def test_report_loader_refuses_foreign_json(tmp_path):
    (tmp_path / "x.json").write_text(json.dumps({"schema": "other/9", "rows": []}))
    with pytest.raises(ArtifactError, match="unknown report schema"):
        load_report(tmp_path / "x.json")
    bad = {"schema": SCHEMA, "devices": {}, "rows": [make_row(model="m", target="onnx", device_id="nobody")]}
    (tmp_path / "y.json").write_text(json.dumps(bad))
    with pytest.raises(ArtifactError, match="no fingerprint"):
        load_report(tmp_path / "y.json")


def test_infinite_sqnr_is_valid_json():
    row = make_row(model="m", target="onnx", device_id="d", parity={"sqnr_db": float("inf"), "max_abs": 0.0})
    text = dumps(new_report("bench", [row], {"d": {"name": "d"}}))
    assert json.loads(text)["rows"][0]["parity"]["sqnr_db"] == "inf"


def test_trained_rows_carry_the_stability_yardstick():
    """parity_summary keeps the manifest's reference_stability; the table's notes show it."""
    from edgekit.report.schema import parity_summary

    parity = [{"stage": "qdq", "runner": "onnxruntime", "passed": False, "failures": ["output: top1 96.0% < 98%"],
               "outputs": [{"max_abs": 0.6, "cosine": 0.998, "sqnr_db": 24.1, "top1": 0.96, "samples": 200}]}]
    yard = {"amplitude_steps": 0.5, "top1": 0.965, "cosine": 0.9974, "sqnr_db": 22.9, "samples": 200}
    par = parity_summary(parity, "qdq", yard)
    assert par["reference_stability"] == {"amplitude_steps": 0.5, "top1": 0.965, "cosine": 0.9974, "sqnr_db": 22.9}
    assert parity_summary(parity, "qdq")["reference_stability"] is None
    row = make_row(model="efficientnet_lite0", target="onnx", precision="int8", device_id="d", parity=par,
                   status="parity-fail")
    md = render_markdown(new_report("matrix", [row], {"d": {"name": "d"}}))
    assert "top1 96.0% < 98%" in md and "yardstick (FP32 ±0.5 px): 96.5% top-1, 22.9 dB; qdq: output: top1 96.0%" in md


def _lat(p50):
    return {"p50_ms": p50, "p90_ms": p50 * 1.1, "p99_ms": p50 * 1.2, "mean_ms": p50}


def test_int8_slower_than_fp32_is_flagged():
    rows = [make_row(model="m", target="onnx", precision="fp32", device_id="d", latency=_lat(2.0)),
            make_row(model="m", target="onnx", precision="int8", device_id="d", latency=_lat(3.0)),
            make_row(model="m", target="openvino", precision="fp32", device_id="d", latency=_lat(2.0)),
            make_row(model="m", target="openvino", precision="int8", device_id="d", latency=_lat(1.0)),
            make_row(model="n", target="onnx", precision="fp32", device_id="d", latency=_lat(2.0)),
            make_row(model="n", target="onnx", precision="int8", device_id="d", latency=_lat(5.0),
                     default_options=False)]
    rep = new_report("matrix", rows, {"d": {"name": "d"}})
    assert [(c["model"], c["target"]) for c in rep["checks"]] == [("m", "onnx")]
    assert rep["checks"][0]["ratio"] == pytest.approx(1.5)
    flagged = [r for r in rep["rows"] if "int8-slower-than-fp32" in r["flags"]]
    assert [(r["model"], r["target"], r["precision"]) for r in flagged] == [("m", "onnx", "int8")]
    assert "INT8 slower than FP32" in render_markdown(rep)


def test_a_reference_interpreter_is_no_device_latency():
    """Core ML off macOS runs on the MIL interpreter: its times stay in the row, but give no
    speed-up and no INT8-vs-FP32 verdict (an interpreter's INT8 is slower for no device's reason)."""
    from edgekit.report.schema import PARITY_ONLY

    torch_row = make_row(model="m", target="torch", precision="fp32", device_id="d", latency=_lat(20.0), baseline=True)
    rows = [torch_row,
            make_row(model="m", target="coreml", precision="fp32", device_id="d", latency=_lat(70.0), flags=[PARITY_ONLY]),
            make_row(model="m", target="coreml", precision="int8", device_id="d", latency=_lat(300.0), flags=[PARITY_ONLY]),
            make_row(model="m", target="onnx", precision="fp32", device_id="d", latency=_lat(4.0))]
    rep = new_report("matrix", rows, {"d": {"name": "d"}})
    assert rep["checks"] == []
    speed = {(r["target"], r["precision"]): r["speedup"] for r in rep["rows"] if not r["baseline"]}
    assert speed == {("coreml", "fp32"): None, ("coreml", "int8"): None, ("onnx", "fp32"): pytest.approx(5.0)}
    assert all(PARITY_ONLY in r["flags"] for r in rep["rows"] if r["target"] == "coreml")  # kept through finalize


def test_interleaved_pair_decides_the_int8_check():
    """Rows measured apart say INT8 is slower; the interleaved pair says it is not (and the
    reverse): the pair wins, and the note shows its ratio."""
    paired_fast = {"fp32_p50_ms": 2.0, "int8_p50_ms": 1.5, "ratio": 0.75, "rounds": 10, "rounds_int8_faster": 7}
    paired_slow = {"fp32_p50_ms": 2.0, "int8_p50_ms": 2.4, "ratio": 1.2}
    rows = [make_row(model="m", target="onnx", precision="fp32", device_id="d", latency=_lat(2.0)),
            make_row(model="m", target="onnx", precision="int8", device_id="d", latency=_lat(3.0),
                     paired=paired_fast),
            make_row(model="m", target="openvino", precision="fp32", device_id="d", latency=_lat(2.0)),
            make_row(model="m", target="openvino", precision="int8", device_id="d", latency=_lat(1.0),
                     paired=paired_slow)]
    rep = new_report("matrix", rows, {"d": {"name": "d"}})
    assert [(c["model"], c["target"], c["interleaved"]) for c in rep["checks"]] == [("m", "openvino", True)]
    assert rep["checks"][0]["ratio"] == pytest.approx(1.2) and "(interleaved)" in rep["checks"][0]["message"]
    md = render_markdown(rep)
    assert "INT8/FP32 0.75x interleaved, INT8 faster in 7/10 rounds" in md
    assert "INT8 slower than FP32 (1.20x, interleaved)" in md


def test_markdown_table(measured):
    md = render_markdown(measured)
    lines = [ln for ln in md.splitlines() if ln.startswith("| tiny |")]
    assert len(lines) == 2
    onnx_line = next(ln for ln in lines if "| onnx |" in ln)
    assert f"{measured['rows'][1]['speedup']:.2f}×" in onnx_line
    dev = measured["rows"][0]["device_id"]
    assert dev in md and "## Runtime versions" in md


def test_html_is_self_contained_with_valid_plots(measured):
    html = render_html(measured)
    imgs = decoded_pngs(html)
    assert len(imgs) == 3  # latency, speed-up, parity
    for img in imgs:
        assert img.width >= 300 and img.height >= 150
        lo, hi = img.convert("L").getextrema()
        assert hi - lo > 100, "plot image is blank"
    assert html.count("<tr") >= 3 and "report JSON" in html


def test_merge_two_devices_one_column_each(measured, tmp_path):
    second = other_device(measured)
    merged = merge_reports([measured, second], ["here.json", "pi.json"])
    assert merged["kind"] == "merged" and len(merged["devices"]) == 2 and len(merged["rows"]) == 4
    headers, rows = per_device_table(merged)
    dev_cols = [h for h in headers if h.endswith("p50 ms")]
    assert len(dev_cols) == 2
    (a, b) = measured["rows"][0]["device_id"], second["rows"][0]["device_id"]
    assert a != b and a in dev_cols[0] and b in dev_cols[1] and "Raspberry Pi 5" in dev_cols[1]
    assert len(rows) == 2  # one line per model/target/precision, not per device
    onnx_line = next(r for r in rows if r[1] == "onnx")
    p_here = measured["rows"][1]["latency"]["p50_ms"]
    assert onnx_line[headers.index(dev_cols[0])].startswith(ms(p_here) + " (")
    assert onnx_line[headers.index(dev_cols[1])].startswith(ms(p_here * 3) + " (")
    # speed-ups stay per device: each device's onnx row is relative to its own torch row
    sp = {r["device_id"]: r["speedup"] for r in merged["rows"] if r["target"] == "onnx"}
    assert sp[a] == pytest.approx(sp[b], rel=1e-2)
    assert len(decoded_pngs(render_html(merged))) == 3


def test_merge_duplicate_keeps_later(measured):
    later = copy.deepcopy(measured)
    later["rows"][1]["latency"]["p50_ms"] = 123.0
    merged = merge_reports([measured, later])
    assert len(merged["rows"]) == 2 and len(merged["replaced"]) == 2
    assert next(r for r in merged["rows"] if r["target"] == "onnx")["latency"]["p50_ms"] == 123.0


def test_cli_merge_and_render(measured, tmp_path, capsys):
    from edgekit.cli.main import main

    a, b = save_report(measured, tmp_path / "a.json"), save_report(other_device(measured), tmp_path / "b.json")
    assert main(["-q", "report", "merge", str(a), str(b), "-o", str(tmp_path / "fleet" / "merged")]) == 0
    out = capsys.readouterr().out
    assert out.count("p50 ms") == 2
    merged = load_report(tmp_path / "fleet" / "merged.json")
    assert len(merged["devices"]) == 2
    assert (tmp_path / "fleet" / "merged.md").read_text().count("p50 ms") == 2
    assert len(decoded_pngs((tmp_path / "fleet" / "merged.html").read_text())) == 3
    assert main(["-q", "report", "render", str(a), "--md"]) == 0
    assert (tmp_path / "a.md").is_file() and not (tmp_path / "a.html").exists()
    assert main(["report", "merge", str(tmp_path / "missing.json"), "-o", str(tmp_path / "m")]) == 2


def _chromium() -> str | None:
    return next((p for p in (shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome")) if p), None)


def test_html_renders_in_headless_chromium(measured, tmp_path):
    wait_for_background("EDGEKIT_APT_PID", 600)   # .ci/run installs chromium while the suite runs
    exe = _chromium()
    if not exe:
        pytest.skip("chromium not installed (apt-get install -y chromium); PNGs are checked by decoding above")
    page = tmp_path / "r.html"
    page.write_text(render_html(measured))
    shot = tmp_path / "shot.png"
    subprocess.run([exe, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    f"--screenshot={shot}", "--window-size=1400,3000", page.as_uri()],
                   check=True, capture_output=True, timeout=120)
    px = np.asarray(Image.open(shot).convert("RGB"), dtype=np.int16)
    # the plots' FP32 bars are matplotlib's tab:blue (#1f77b4); nothing else on the page has that colour
    blue = int((np.abs(px - np.array([0x1F, 0x77, 0xB4])) < 12).all(axis=-1).sum())
    assert blue > 500, "no plot pixels in the rendered page"


def test_rows_measured_on_a_busy_machine_are_flagged():
    dev = {"name": "d", "cpu": {"usable_threads": 2}}
    rows = [make_row(model="m", target="onnx", device_id="d", latency={**_lat(2.0), "loadavg": 9.0}),
            make_row(model="m", target="openvino", device_id="d", latency={**_lat(2.0), "loadavg": 2.5})]
    rep = new_report("bench", rows, {"d": dev})
    assert [r["target"] for r in rep["rows"] if "busy-machine" in r["flags"]] == ["onnx"]
    (check,) = [c for c in rep["checks"] if c["check"] == "busy-machine"]
    assert check["max_loadavg"] == 9.0 and "not representative" in render_markdown(rep)
