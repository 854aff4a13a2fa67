"""Import coremltools without its import-time noise on Linux.

coremltools logs "Failed to load _MLModelProxy ..." for each native binding missing off
macOS, and warns about untested torch / scikit-learn versions. Those lines say nothing
a user can act on here, so they are held back while the package imports.
"""
from __future__ import annotations

from edgekit.console import quiet_logs
from edgekit.errors import require

__all__ = ["import_coremltools", "quiet_logs"]


def import_coremltools(what: str = "the CoreML target"):
    """``import coremltools`` (or MissingDependencyError naming the ``coreml`` extra)."""
    with quiet_logs("coremltools", "root", "torch.utils._pytree"):
        return require("coremltools", "coreml", what)
