"""The matrix and the CI gate on a Ray cluster (DESIGN.md §7: Ray, never a home-made scheduler).

``--cluster ray`` turns the cells of ``edgekit matrix`` and ``edgekit ci`` into Ray tasks:
exports anywhere there are CPUs, parity and latency on the node that holds the custom
resource ``device:<name>`` (quantity 1, so a device never times two things at once).
Artifacts travel as bytes through Ray's object store with their manifest, and are
verified on arrival. Ray is optional: ``pip install 'edgekit[cluster]'``.

- :mod:`.connect`: address resolution, connecting, the device nodes of a cluster
- :mod:`.transport`: artifact folders as verified bytes
- :mod:`.tasks`: what runs on the nodes (probe, export, device cell, baseline, pairs)
- :mod:`.executor`: the matrix executor (submission, retries, lost devices, provenance)
- :mod:`.ci`: the CI gate's cells as tasks
- :mod:`.worker`: ``edgekit worker``, a device node joining a cluster
"""
from __future__ import annotations

from ..errors import MissingDependencyError

INSTALL_HINT = "pip install 'edgekit[cluster]'"


def require_ray():
    """The ``ray`` module, or a MissingDependencyError (exit 2) with the install hint."""
    try:
        import ray
    except ImportError:
        raise MissingDependencyError("ray", "cluster", what="--cluster", hint=INSTALL_HINT) from None
    return ray
