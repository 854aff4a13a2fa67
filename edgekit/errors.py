"""Errors a user can act on.

Every user-facing failure is an :class:`EdgekitError`: the CLI prints its one-line
message and hint and exits with its ``exit_code`` (2 for usage, dependency and
export errors, 1 for a parity failure). No ``assert`` guards user input.
"""
from __future__ import annotations

import difflib
from contextlib import contextmanager
from typing import Iterable


class EdgekitError(Exception):
    """Base class: ``message`` says what went wrong, ``hint`` what to do about it."""

    exit_code = 2

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message} ({self.hint})"


class UsageError(EdgekitError):
    """Bad command-line input: shape, option combination, path."""


class UnknownNameError(EdgekitError):
    """An unknown model or target; suggests close matches."""

    kind = "name"

    def __init__(self, name: str, known: Iterable[str], hint: str | None = None):
        known = sorted(known)
        close = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
        if close:
            msg = f"unknown {self.kind} '{name}': did you mean {', '.join(repr(c) for c in close)}?"
        else:
            msg = f"unknown {self.kind} '{name}'"
        super().__init__(msg, hint)
        self.name = name
        self.suggestions = close


class UnknownModelError(UnknownNameError):
    kind = "model"

    def __init__(self, name: str, known: Iterable[str]):
        super().__init__(name, known, hint="run 'edgekit models' to list them")


class UnknownTargetError(UnknownNameError):
    kind = "target"

    def __init__(self, name: str, known: Iterable[str]):
        super().__init__(name, known, hint="run 'edgekit targets' to list them")


class MissingDependencyError(EdgekitError):
    """An optional backend is not installed; names the extra that brings it."""

    def __init__(self, package: str, extra: str, what: str | None = None, hint: str | None = None):
        what = what or package
        super().__init__(
            f"{what} needs the Python package '{package}', which is not installed",
            hint or f"pip install 'edgekit[{extra}]'",
        )
        self.package = package
        self.extra = extra


class UnavailableError(EdgekitError):
    """The backend is installed but cannot run here (no GPU, no such device)."""


class WeightsError(EdgekitError):
    """A checkpoint that cannot be read or does not fit the model."""


class ExportError(EdgekitError):
    """A stage of the export failed; ``stage`` names it."""

    def __init__(self, stage: str, message: str, hint: str | None = None):
        super().__init__(f"{stage} stage failed: {message}", hint)
        self.stage = stage


class ArtifactError(EdgekitError):
    """An artifact or manifest that cannot be read (corrupt ONNX, missing files)."""


class MilError(EdgekitError):
    """edgekit's Core ML program interpreter (exporters/coreml/mil) cannot execute a program: an unknown
    op, an unsupported configuration, an input it lacks."""


class CalibrationError(EdgekitError):
    """Calibration data that cannot be used (empty folder, no images)."""


class ConfigError(UsageError):
    """An edgekit.toml (``edgekit ci``'s project file) that cannot be used (exit 2, before any export)."""


class DeviceNotAvailableError(UnavailableError, UsageError):
    """``--device X`` names a device this machine does not have (exit 2)."""


class ParityError(EdgekitError):
    """A stage's outputs are outside tolerance. Exit code 1: the artifact is still written."""

    exit_code = 1


def require(module: str, extra: str, what: str | None = None):
    """Import an optional backend module or raise :class:`MissingDependencyError`."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:  # pragma: no cover - depends on the environment
        top = module.split(".")[0]
        if getattr(exc, "name", None) not in (None, top, module):
            # the package is there but one of its own imports failed
            raise MissingDependencyError(exc.name or top, extra, what,
                                         hint=f"{top} failed to import: {exc}") from exc
        raise MissingDependencyError(top, extra, what) from exc


def first_line(exc: BaseException, limit: int | None = 300, empty: str | None = None) -> str:
    """An exception's first line, without terminal colour codes, cut to ``limit`` characters;
    for an exception without text, ``empty`` (default: the exception's type name). The one
    helper for every one-line error edgekit prints (issue 22)."""
    import re

    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).strip()
    line = text.splitlines()[0] if text else (type(exc).__name__ if empty is None else empty)
    return line if limit is None else line[:limit]


DEBUG_HINT = "rerun with --debug for the full trace"


@contextmanager
def backend_errors(stage: str, what: str = "", hint: str | None = DEBUG_HINT, with_type: bool = True):
    """Turn an exception from a backend (coremltools, ExecuTorch, OpenVINO, onnxsim, ...) raised
    inside the block into ``ExportError(stage, "<what>: <Type>: <first line>", hint)``; edgekit's own
    errors pass through unchanged. The traceback stays chained for ``--debug``."""
    try:
        yield
    except EdgekitError:
        raise
    except Exception as exc:
        line = first_line(exc, 300)
        text = f"{type(exc).__name__}: {line}" if with_type else line
        raise ExportError(stage, f"{what}: {text}" if what else text, hint=hint) from exc
