"""Architecture rules (DESIGN.md §2): `import edgekit` is light, and the core never
imports `exporters`/`calibration` at import time."""
import ast
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT  # noqa: E402
HEAVY = ("onnxruntime", "openvino", "coremltools", "tensorrt", "nncf", "executorch", "ncnn", "onnx")


def _modules_after(code: str) -> set[str]:
    out = subprocess.run([sys.executable, "-c", f"{code}\nimport sys; print(' '.join(sys.modules))"],
                         capture_output=True, text=True, check=True, cwd=ROOT)
    return set(out.stdout.split())


def test_import_edgekit_pulls_in_no_backend():
    mods = _modules_after("import edgekit")
    assert not {m for m in mods if m.split(".")[0] in HEAVY}
    assert "torch" not in mods


def test_cli_parser_and_target_listing_import_no_backend():
    mods = _modules_after("from edgekit.cli.main import build_parser; build_parser()\n"
                          "from edgekit.targets import list_targets; list_targets()")
    assert not {m for m in mods if m.split(".")[0] in HEAVY}


def _top_level_imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in tree.body:  # module level only; imports inside functions are lazy by design
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_core_does_not_import_exporters_or_calibration_at_import_time():
    offenders = {str(p.relative_to(ROOT)): _top_level_imports(p) & {"exporters", "calibration"}
                 for p in (ROOT / "edgekit").rglob("*.py")}
    assert {k: v for k, v in offenders.items() if v} == {}


def test_exporters_and_calibration_import_backends_lazily():
    offenders = {str(p.relative_to(ROOT)): _top_level_imports(p) & set(HEAVY)
                 for d in ("exporters", "calibration", "edgekit") for p in (ROOT / d).rglob("*.py")}
    assert {k: v for k, v in offenders.items() if v} == {}


def test_an_fp32_export_never_imports_calibration(tmp_path):
    """Photo feeds live in edgekit (edgekit/feeds.py): an FP32 export and its parity check run
    without the calibration package (issue 22)."""
    out = tmp_path / "out"
    mods = _modules_after(
        "from pathlib import Path\n"
        "from edgekit.console import Console\n"
        "from edgekit.contracts import ExportRequest\n"
        "from edgekit.pipeline import export\n"
        f"r = export(ExportRequest(model='lenet5', target='onnx', out=Path({str(out)!r}), bench=False, samples=4), "
        "Console(quiet=True))\n"
        "assert r.passed, r.manifest.parity")
    assert (out / "artifact.json").is_file()
    assert "edgekit.feeds" in mods and not {m for m in mods if m.split(".")[0] == "calibration"}
