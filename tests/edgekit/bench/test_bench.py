"""edgekit bench: timing statistics, device fingerprint, artifact rows, the CLI.

A tiny conv net exported to ONNX (real torch.onnx export, real ONNX Runtime) keeps this
file fast; no assertion depends on how fast this machine is.
"""
from __future__ import annotations

import json
import re
import sys
from importlib import metadata

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
torch = pytest.importorskip("torch")

from edgekit.artifact import Manifest  # noqa: E402
from edgekit.bench.device import device_id_of, fingerprint  # noqa: E402
from edgekit.bench.run import BenchSettings, bench_artifact  # noqa: E402
from edgekit.bench.timing import LatencyStats, measure, synthetic_feed  # noqa: E402
from edgekit.contracts import ExportRequest  # noqa: E402
from edgekit.errors import UsageError  # noqa: E402
from edgekit.specs import InputSpec  # noqa: E402

from tests.tiny import MODEL_SRC, tiny_model  # noqa: E402  (the shared tiny model)


def write_artifact(folder, dynamic_batch=False):
    """A real artifact folder: ONNX export + parity vs torch + manifest, like 'edgekit export' writes."""
    from edgekit.compare import tolerance_for
    from edgekit.parity import run_parity
    from edgekit.torch_runner import TorchRunner
    from exporters.onnx.exporter import OrtRunner, export_onnx

    folder.mkdir(parents=True, exist_ok=True)
    model = tiny_model()
    inputs = (InputSpec(shape=(1, 3, 32, 32), dynamic_batch=dynamic_batch),)
    art = export_onnx(model, inputs, folder / "tiny.onnx", dynamic_batch=dynamic_batch)
    feeds = [synthetic_feed(inputs, seed=s) for s in range(4)]
    comps = run_parity(TorchRunner(model, inputs), [(art, OrtRunner(art.path, art.inputs))], feeds,
                       lambda a: tolerance_for("fp32"), "synthetic")
    req = ExportRequest(model=str(folder / "tiny.py:tiny"), target="onnx", out=folder, input_shape=(1, 3, 32, 32),
                        dynamic_batch=dynamic_batch)
    Manifest(model={"name": "tiny", "user_ref": req.model, "input_shape": [1, 3, 32, 32]}, request=req.to_dict(),
             stages=[art], parity=[c.to_dict() for c in comps]).write(folder)
    (folder / "tiny.py").write_text(MODEL_SRC)
    return folder


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    return write_artifact(tmp_path_factory.mktemp("bench") / "tiny-onnx-fp32")


@pytest.fixture(scope="module")
def dyn_artifact(tmp_path_factory):
    return write_artifact(tmp_path_factory.mktemp("bench") / "tiny-dyn", dynamic_batch=True)


def _runner(folder):
    from exporters.onnx.runner import OrtRunner

    m = Manifest.read(folder)
    return OrtRunner(m.final.path, m.final.inputs, threads=1)


def test_measure_fixed_iterations_statistics(artifact):
    stats = measure(_runner(artifact), warmup=2, iters=25)
    assert isinstance(stats, LatencyStats)
    assert stats.iterations == 25 and stats.warmup == 2 and stats.batch == 1 and stats.threads == 1
    assert len(stats.samples_ms) == 25
    s = np.sort(stats.samples_ms)
    assert stats.min_ms == pytest.approx(s[0]) and stats.max_ms == pytest.approx(s[-1])
    assert stats.p50_ms == pytest.approx(np.percentile(s, 50))
    assert stats.p90_ms == pytest.approx(np.percentile(s, 90))
    assert stats.min_ms <= stats.p50_ms <= stats.p90_ms <= stats.p99_ms <= stats.max_ms
    assert stats.mean_ms == pytest.approx(s.mean()) and stats.std_ms == pytest.approx(s.std(ddof=1))
    assert stats.throughput == pytest.approx(1000.0 / stats.mean_ms)
    assert stats.load_ms is not None and stats.load_ms > 0 and stats.first_ms > 0
    assert stats.runner == "onnxruntime"
    d = stats.to_dict()
    assert "samples_ms" not in d and json.loads(json.dumps(d))["iterations"] == 25
    assert LatencyStats.from_dict(d).p50_ms == stats.p50_ms


def test_measure_time_budget_and_opened_runner(artifact):
    stats = measure(_runner(artifact), warmup=0, seconds=0.05, min_iters=7)
    assert stats.iterations >= 7 and stats.timed_s >= 0.0
    runner = _runner(artifact)
    with runner:
        stats = measure(runner, synthetic_feed(runner.inputs), warmup=1, iters=3, opened=True)
        assert runner._session is not None  # measure left the caller's runner open
    assert stats.load_ms is None and stats.iterations == 3


def test_measure_rejects_bad_budgets(artifact):
    with pytest.raises(UsageError, match="--iters"):
        measure(_runner(artifact), iters=0)
    with pytest.raises(UsageError, match="--warmup"):
        measure(_runner(artifact), warmup=-1, iters=1)
    with pytest.raises(UsageError, match="--seconds"):
        measure(_runner(artifact), seconds=0)


def test_measure_memory_fields(artifact):
    stats = measure(_runner(artifact), warmup=1, iters=2)
    if sys.platform.startswith("linux"):
        assert stats.peak_rss_mb is not None and stats.peak_rss_mb > 10  # python + numpy + torch are resident
        assert stats.rss_delta_mb is not None
    assert stats.peak_rss_scope in ("measurement", "process")


def test_synthetic_feed_is_seeded_and_batched():
    inputs = (InputSpec(shape=(1, 3, 8, 8)),)
    a, b = synthetic_feed(inputs, 4), synthetic_feed(inputs, 4)
    assert a["input"].shape == (4, 3, 8, 8) and a["input"].dtype == np.float32
    np.testing.assert_array_equal(a["input"], b["input"])
    assert abs(float(a["input"].std()) - 1.0) < 0.2


def test_bench_artifact_row_with_dynamic_batch(dyn_artifact):
    row = bench_artifact(dyn_artifact, BenchSettings(batch=4, warmup=1, iters=5, threads=1), "dev0")
    assert row["status"] == "ok", row["error"]
    assert row["model"] == "tiny" and row["target"] == "onnx" and row["precision"] == "fp32"
    assert row["input_shape"] == [4, 3, 32, 32] and row["latency"]["batch"] == 4
    assert row["latency"]["throughput"] == pytest.approx(4000.0 / row["latency"]["mean_ms"])
    assert row["versions"]["onnxruntime"] == metadata.version("onnxruntime")
    assert row["parity"]["passed"] and row["parity"]["max_abs"] < 1e-4 and row["parity"]["stage"] == "onnx"
    assert row["size_mb"] > 0


def test_bench_artifact_static_batch_mismatch_is_an_error_row(artifact):
    row = bench_artifact(artifact, BenchSettings(batch=2, iters=1), "dev0")
    assert row["status"] == "error" and "exported with batch 1" in row["error"] and "--dynamic-batch" in row["error"]


def test_fingerprint_fields_and_stable_id():
    fp = fingerprint()
    assert re.fullmatch(r"[0-9a-f]{10}", fp["device_id"])
    assert fingerprint()["device_id"] == fp["device_id"]
    assert fp["runtimes"]["torch"] == metadata.version("torch")
    assert fp["runtimes"]["onnxruntime"] == metadata.version("onnxruntime")
    assert fp["cpu"]["threads"] >= 1 and fp["cpu"]["cores"] >= 1 and fp["memory_gb"] > 0
    assert fp["python"]["version"] == ".".join(map(str, sys.version_info[:3]))
    try:
        flags = open("/proc/cpuinfo").read()
    except OSError:
        flags = ""
    if re.search(r"^flags\s*:.*\bavx2\b", flags, re.M):
        assert "avx2" in fp["cpu"]["isa"]
    labelled = fingerprint("lab-rpi5-07")
    assert labelled["device_id"] != fp["device_id"] and labelled["name"] == "lab-rpi5-07"
    # versions are row data, not device identity: an upgrade keeps the id
    assert device_id_of({**fp, "runtimes": {"torch": "0.0"}}) == fp["device_id"]


def test_cli_bench_writes_three_reports(artifact, tmp_path, capsys):
    from edgekit.cli.main import main

    out = tmp_path / "r"
    code = main(["-q", "bench", str(artifact), "--iters", "5", "--warmup", "1", "--threads", "1",
                 "--torch", str(artifact / "tiny.py:tiny"),
                 "--json", str(out / "b.json"), "--md", str(out / "b.md"), "--html", str(out / "b.html")])
    assert code == 0
    rep = json.loads((out / "b.json").read_text())
    assert rep["schema"] == "edgekit.report/1" and rep["kind"] == "bench"
    targets = [r["target"] for r in rep["rows"]]
    assert targets == ["torch", "onnx"]
    torch_row, onnx_row = rep["rows"]
    assert torch_row["baseline"] and torch_row["input_shape"] == [1, 3, 32, 32]
    assert onnx_row["speedup"] == pytest.approx(torch_row["latency"]["p50_ms"] / onnx_row["latency"]["p50_ms"],
                                                rel=1e-2)
    assert rep["devices"][onnx_row["device_id"]]["runtimes"]["onnxruntime"]
    assert "| tiny | onnx | fp32 | ok |" in (out / "b.md").read_text()
    assert (out / "b.html").read_text().count("data:image/png;base64,") == 3
    assert "tiny" in capsys.readouterr().out


def test_cli_bench_missing_artifact_is_exit_2(tmp_path, capsys):
    from edgekit.cli.main import main

    assert main(["bench", str(tmp_path / "nope")]) == 2
    assert "no artifact.json" in capsys.readouterr().err


def test_int8_rows_are_timed_interleaved_against_their_fp32_sibling(artifact):
    """pair_int8_with_fp32 opens both artifacts and times them in alternating rounds; here the
    'INT8' row points at the same tiny ONNX file, so the ratio is close to 1 on any machine."""
    from edgekit.bench.run import PAIRED_SECONDS, pair_int8_with_fp32

    settings = BenchSettings(warmup=1, iters=3)
    fp32 = bench_artifact(artifact, settings, "dev0")
    int8 = dict(fp32, precision="int8", flags=[], warnings=[])
    other = dict(fp32, precision="int8", model="other", warnings=[])  # no FP32 sibling: left alone
    assert pair_int8_with_fp32([fp32, int8, other], settings) == 1
    p = int8["paired"]
    assert p["fp32_p50_ms"] > 0 and p["int8_p50_ms"] > 0 and p["seconds_each"] == PAIRED_SECONDS
    assert 0.2 < p["ratio"] < 5  # the same model twice: no order-of-magnitude skew from interleaving
    assert p["rounds"] == 10 and 0 <= p["rounds_int8_faster"] <= 10
    assert other.get("paired") is None and fp32.get("paired") is None


def test_artifact_rows_are_timed_interleaved_against_torch_eager(artifact):
    """pair_with_baseline times torch eager and the artifact in alternating rounds; the
    speed-up then comes from that pair (finalize)."""
    from edgekit.bench.run import pair_with_baseline
    from edgekit.report import new_report

    settings = BenchSettings(warmup=1, iters=3)
    row = bench_artifact(artifact, settings, "dev0")
    inputs = (InputSpec(shape=(1, 3, 32, 32)),)
    other = dict(row, model="not-in-references", warnings=[])
    assert pair_with_baseline([row, other], {"tiny": ("tiny", tiny_model(), inputs)}, settings) == 1
    pb = row["paired_baseline"]
    assert pb["torch_p50_ms"] > 0 and pb["p50_ms"] > 0 and pb["rounds"] == 10
    # the median of the per-round ratios (timing.paired_ratio), near the pooled p50s' quotient
    assert 0.5 < pb["speedup"] / (pb["torch_p50_ms"] / pb["p50_ms"]) < 2
    assert other.get("paired_baseline") is None
    rep = new_report("bench", [row], {"dev0": {"name": "dev0"}})
    assert rep["rows"][0]["speedup"] == pytest.approx(pb["speedup"])  # the pair, not the two p50s


def test_paired_ratio_is_the_median_of_the_per_round_ratios():
    """The machine slows to half speed for three rounds and a burst of load hits INT8 alone in
    one more: inside every other round INT8 takes 0.8 of FP32's time, and that is the answer,
    though the pooled p50s (shaped by the slow rounds) would say 1.25."""
    from edgekit.bench.timing import paired_ratio

    fp32 = [10.0] * 6 + [20.0] * 3 + [10.0]
    int8 = [8.0] * 6 + [16.0] * 3 + [30.0]
    times = {"fp32": {"p50_ms": 10.0, "round_p50_ms": fp32}, "int8": {"p50_ms": 12.5, "round_p50_ms": int8}}
    assert paired_ratio(times, "int8", "fp32") == {"ratio": 0.8, "rounds": 10, "rounds_faster": 9}
    assert paired_ratio(times, "fp32", "int8")["ratio"] == 1.25
    for t in times.values():  # a result without per-round figures: the pooled p50s
        del t["round_p50_ms"]
    assert paired_ratio(times, "int8", "fp32") == {"ratio": 1.25, "rounds": 0, "rounds_faster": 0}


def test_int8_speed_times_each_method_on_its_runtime(artifact):
    """bench/int8_speed.py (issue 20's peer speed table): every ONNX on ONNX Runtime, every
    OpenVINO model on OpenVINO, in interleaved rounds, each with its speed against FP32 measured
    in the same rounds. Numbers are not asserted (benchmarks measure speed, tests do not), only
    that each method was timed on the runtime it was given for and the ratio is the paired one."""
    pytest.importorskip("openvino", reason="OpenVINO is not installed (pip install 'edgekit[openvino]')")
    from bench.int8_speed import latency

    onnx = Manifest.read(artifact).final.path
    feed = synthetic_feed((InputSpec(shape=(1, 3, 32, 32)),))
    out = latency({"fp32": onnx, "same": onnx}, {"fp32": onnx, "nncf_stand_in": onnx}, feed, seconds=0.1)
    assert set(out["onnxruntime"]) == {"fp32", "same"} and set(out["openvino"]) == {"fp32", "nncf_stand_in"}
    for runtime, rows in (("onnxruntime", out["onnxruntime"]), ("openvino", out["openvino"])):
        assert "vs_fp32" not in rows["fp32"]
        for k, row in rows.items():
            assert 0 < row["p50_ms"] <= row["p90_ms"], (runtime, k, row)
        other = next(k for k in rows if k != "fp32")
        assert 0 < rows[other]["vs_fp32"] < 1e6, rows


def test_guard_seconds_come_from_the_request_then_the_environment_then_the_default(monkeypatch):
    """--guard-seconds (or a matrix's budget) wins over $EDGEKIT_GUARD_SECONDS, which wins over 1.5 s;
    a bad variable is a usage error that names it."""
    from edgekit.bench.guard import GUARD_ENV, GUARD_SECONDS, guard_seconds
    from edgekit.contracts import ExportRequest
    from edgekit.errors import UsageError

    monkeypatch.delenv(GUARD_ENV, raising=False)
    assert guard_seconds(ExportRequest(model="lenet5")) == GUARD_SECONDS == 1.5
    monkeypatch.setenv(GUARD_ENV, "0.4")
    assert guard_seconds(ExportRequest(model="lenet5")) == 0.4
    assert guard_seconds(ExportRequest(model="lenet5", guard_seconds=2.0)) == 2.0
    monkeypatch.setenv(GUARD_ENV, " ")
    assert guard_seconds(ExportRequest(model="lenet5")) == 1.5
    monkeypatch.setenv(GUARD_ENV, "inf")
    with pytest.raises(UsageError, match=r"\$EDGEKIT_GUARD_SECONDS must be a finite number"):
        guard_seconds(ExportRequest(model="lenet5"))


def test_int8_saturates_on_x86_without_vnni_only():
    """x86 without VNNI adds u8×s8 product pairs in saturating 16-bit lanes (edgekit/ort_options.py)."""
    from edgekit.bench.device import cpu_info, int8_saturates

    assert int8_saturates({"arch": "x86_64", "isa": ["avx2", "fma"]})
    assert int8_saturates({"arch": "AMD64", "isa": ["avx512f", "avx512bw"]})          # AVX-512 without VNNI
    for isa in (["avx2", "avx_vnni"], ["avx512f", "avx512_vnni"], ["amx_tile", "amx_int8"]):
        assert not int8_saturates({"arch": "x86_64", "isa": isa}), isa
    assert not int8_saturates({"arch": "aarch64", "isa": ["asimd", "neon"]})
    here = cpu_info()
    assert int8_saturates() == int8_saturates(here)


def test_int8_guard_says_in_how_many_rounds_int8_won():
    """A 0.99x verdict from ten rounds can be noise (INT8 won 5) or not (INT8 won none): the guard's
    line says which, with the paired median it is judged by."""
    from types import SimpleNamespace

    from edgekit.bench.guard import guard_record

    warned, logged = [], []
    ctx = SimpleNamespace(request=SimpleNamespace(threads=2), warn=warned.append, log=logged.append)
    fp32 = [10.0] * 10
    int8 = [9.5, 10.4, 9.6, 10.3, 10.2, 10.1, 9.7, 10.5, 10.2, 10.6]   # faster in 3 rounds, median 1.015x slower
    t = {"fp32": {"p50_ms": 10.0, "p90_ms": 10.5, "round_p50_ms": fp32},
         "int8": {"p50_ms": 10.15, "p90_ms": 10.6, "round_p50_ms": int8}}
    rec = guard_record(ctx, t, "int8", "onnxruntime", 1.0, "ONNX")
    assert rec["rounds"] == 10 and rec["rounds_int8_faster"] == 3 and not rec["int8_faster"]
    assert len(warned) == 1 and "not faster" in warned[0] and "INT8 faster in 3 of them" in warned[0]
    t["int8"]["round_p50_ms"] = [x * 0.8 for x in fp32]
    rec = guard_record(ctx, t, "int8", "onnxruntime", 1.0, "ONNX")
    assert rec["int8_faster"] and "INT8 faster in 10 of them" in logged[-1] and len(warned) == 1
