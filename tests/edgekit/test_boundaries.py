"""The dependency direction of docs/architecture.md, as a test (issue 22).

Every import of ``edgekit``, ``exporters`` and ``calibration`` is read from the source with
``ast``, lazy ones inside functions included (``if TYPE_CHECKING:`` blocks are type hints, not
dependencies). The rules:

* the core (errors, specs, contracts, compare, artifact, outdir, signals) imports nothing above it;
* the zoo (``edgekit.models``) knows nothing of targets, quantization, the pipeline or the CLI;
* calibration hands graphs, not targets: it never imports ``exporters``;
* targets never import the CLI;
* the pipeline reaches targets only through the registry (``edgekit.targets``).

``KNOWN`` lists the violations that exist today, each with its reason; a new one fails with its
file and line. Remove an entry when its import goes.
"""
from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import ROOT  # noqa: E402
PACKAGES = ("edgekit", "exporters", "calibration")
CORE = ("edgekit.errors", "edgekit.specs", "edgekit.contracts", "edgekit.compare", "edgekit.artifact",
        "edgekit.outdir", "edgekit.signals")

# (importing module, imported module): why it is still there
KNOWN: dict[tuple[str, str], str] = {}


def _module_name(path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
        (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imports(source: str, module: str, is_package: bool = False) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in ``source``, at any depth, except under
    ``if TYPE_CHECKING:``."""
    package = module if is_package else module.rpartition(".")[0]
    found: list[tuple[int, str]] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.extend((node.lineno, a.name) for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            if node.module:
                found.append((node.lineno, name))
            else:  # "from . import x": x is a module of the package
                found.extend((node.lineno, f"{name}.{a.name}") for a in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(source))
    return found


def _within(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def rule_broken(importer: str, imported: str) -> str | None:
    """Which rule ``importer`` importing ``imported`` breaks, or None."""
    if imported.split(".")[0] not in PACKAGES:
        return None
    if _within(importer, CORE) and not _within(imported, CORE):
        return "the core imports nothing above it"
    if _within(importer, ("edgekit.models",)) and (
            _within(imported, ("exporters", "calibration", "edgekit.targets", "edgekit.pipeline", "edgekit.cli"))):
        return "the zoo knows nothing of targets, quantization, the pipeline or the CLI"
    if _within(importer, ("calibration",)) and _within(imported, ("exporters",)):
        return "calibration hands graphs, not targets"
    if _within(importer, ("exporters",)) and _within(imported, ("edgekit.cli",)):
        return "targets never import the CLI"
    if importer == "edgekit.pipeline" and _within(imported, ("exporters",)):
        return "the pipeline reaches targets only through the registry"
    return None


def violations(root: Path = ROOT) -> list[str]:
    out = []
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            module = _module_name(path, root)
            for line, name in imports(path.read_text(), module, path.name == "__init__.py"):
                why = rule_broken(module, name)
                known = any(module == a and _within(name, (b,)) for a, b in KNOWN)
                if why and not known:
                    out.append(f"{path.relative_to(root)}:{line}: imports {name}: {why}")
    return out


def test_no_import_crosses_a_boundary():
    assert violations() == []


def test_every_known_violation_still_exists():
    """A KNOWN entry whose import went away must go too (the list only shrinks)."""
    seen = set()
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            module = _module_name(path, ROOT)
            for _, name in imports(path.read_text(), module, path.name == "__init__.py"):
                seen |= {(a, b) for a, b in KNOWN if module == a and _within(name, (b,))}
    assert set(KNOWN) - seen == set()


def test_a_forbidden_import_fails_with_its_file_and_line(tmp_path):
    """The scan reads lazy imports and relative ones, and skips TYPE_CHECKING blocks."""
    for package in PACKAGES:
        (tmp_path / package).mkdir()
        (tmp_path / package / "__init__.py").write_text("")
    (tmp_path / "calibration" / "bad.py").write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from exporters.onnx.runner import OrtRunner\n"
        "def f():\n    from exporters.onnx.runner import OrtRunner\n    return OrtRunner\n")
    (tmp_path / "edgekit" / "models").mkdir()
    (tmp_path / "edgekit" / "models" / "zoo.py").write_text("from ..targets import get_target\n")
    (tmp_path / "edgekit" / "errors.py").write_text("import numpy\nfrom .pipeline import export\n")
    found = sorted(violations(tmp_path))
    assert found == ["calibration/bad.py:5: imports exporters.onnx.runner: calibration hands graphs, not targets",
                     "edgekit/errors.py:2: imports edgekit.pipeline: the core imports nothing above it",
                     "edgekit/models/zoo.py:1: imports edgekit.targets: the zoo knows nothing of targets, "
                     "quantization, the pipeline or the CLI"], found
