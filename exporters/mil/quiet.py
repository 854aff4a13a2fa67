"""Import coremltools without its import-time noise on Linux.

coremltools logs "Failed to load _MLModelProxy ..." for each native binding missing off
macOS, and warns about untested torch / scikit-learn versions. Those lines say nothing
a user can act on here, so they are held back while the package imports.
"""
from __future__ import annotations

import contextlib
import logging
import warnings

from edgekit.errors import require


@contextlib.contextmanager
def quiet_logs(*names: str, level: int = logging.ERROR):
    saved = [(n, logging.getLogger(n).level) for n in names]
    for n in names:
        logging.getLogger(n).setLevel(level)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for n, lvl in saved:
            logging.getLogger(n).setLevel(lvl)


def import_coremltools(what: str = "the CoreML target"):
    """``import coremltools`` (or MissingDependencyError naming the ``coreml`` extra)."""
    with quiet_logs("coremltools", "root", "torch.utils._pytree"):
        return require("coremltools", "coreml", what)
