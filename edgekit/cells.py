"""One export cell (model × target × precision), as ``edgekit matrix`` and ``edgekit ci`` both
build it: where its artifact goes, the request the pipeline gets, and the export with its
failure captured as text (a cell's failure is that cell's content; the run goes on)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Cell:
    model: str                    # as written in the project file or on the command line (zoo names canonical)
    target: str
    precision: str
    ref: str = ""                 # what the export resolves: a user model file made absolute
    input_shape: tuple[int, ...] | None = None
    batch: int = 1
    calib: Path | None = None
    weights: Path | None = None
    pretrained: bool = False
    samples: int | None = None
    tolerance: dict[str, float] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)   # the target's own options (ExportRequest.options)

    @property
    def name(self) -> str:
        return f"{self.model}/{self.target}/{self.precision}"


def cell_name(model: str, target: str, precision: str) -> str:
    """The cell's folder name under ``OUT/artifacts``."""
    return f"{model.replace(':', '_').replace('/', '_')}-{target}-{precision}"


def cell_folder(out: Path, model: str, target: str, precision: str) -> Path:
    return Path(out) / "artifacts" / cell_name(model, target, precision)


def cell_request(cell: Cell, folder: Path, threads: int | None = None, device: str | None = None,
                 seconds: float | None = None):
    """The pipeline's request for ``cell``: parity on, the pipeline's own bench off (the caller
    measures), an existing folder replaced; ``seconds``, the caller's timing budget per runner,
    also bounds the exporters' INT8 latency guards (a quick matrix gets quick guards)."""
    from .contracts import ExportRequest

    return ExportRequest(model=cell.ref or cell.model, target=cell.target, precision=cell.precision, out=folder,
                         batch=cell.batch, input_shape=cell.input_shape, weights=cell.weights,
                         pretrained=cell.pretrained, calib=cell.calib, device=device, threads=threads,
                         samples=cell.samples, tolerance=dict(cell.tolerance), parity=True, bench=False,
                         force=True, guard_seconds=seconds, options=dict(cell.options))


def export_cell(request, console, debug: bool = False) -> tuple[Any, str | None]:
    """(pipeline result, None), or (None, the error as one line) when the export failed;
    ``debug`` re-raises instead."""
    from .bench.run import error_text
    from .pipeline import export

    try:
        return export(request, console), None
    except Exception as exc:  # noqa: BLE001 - the cell's content is its error
        if debug:
            raise
        return None, error_text(exc)
