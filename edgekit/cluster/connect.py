"""Which Ray cluster, connecting to it, and what its nodes offer.

``--cluster ray`` means ``$RAY_ADDRESS`` when set, else a Ray started here for this run
(one node that is also device ``local``); ``--cluster ray://HOST:PORT`` is a Ray client
address and ``--cluster HOST:PORT`` a cluster's GCS address (what ``ray start --head``
prints).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import UsageError, first_line
from . import require_ray

DEVICE_PREFIX = "device:"
LOCAL_DEVICE = "local"


def resolve_address(value: str | None) -> str | None:
    """The address ``ray.init`` gets: None starts a local Ray for this run."""
    value = (value or "ray").strip()
    if value == "ray":
        return os.environ.get("RAY_ADDRESS") or None
    if value.startswith("ray://") or (":" in value and value.rsplit(":", 1)[1].isdigit()):
        return value
    raise UsageError(f"--cluster {value!r} is not a Ray address",
                     hint="use --cluster ray (with $RAY_ADDRESS, or none for a local Ray), ray://HOST:PORT "
                          "or HOST:PORT as printed by 'ray start --head'")


def _source_root() -> str | None:
    """The checkout edgekit is imported from, when it is one (nodes on a shared filesystem
    then import the same code); installed copies elsewhere ignore a path they lack."""
    root = Path(__file__).resolve().parents[2]
    return str(root) if (root / "pyproject.toml").is_file() else None


def connect(value: str | None = "ray") -> str:
    """Connect this process to the cluster (once); returns a description of where."""
    ray = require_ray()
    os.environ.setdefault("RAY_DISABLE_IMPORT_WARNING", "1")
    if ray.is_initialized():
        return "the Ray cluster this process is connected to"
    address = resolve_address(value)
    env: dict[str, Any] = {}
    root = _source_root()
    if root:
        env = {"env_vars": {"PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)}}
    kwargs: dict[str, Any] = dict(include_dashboard=False, runtime_env=env or None, logging_level="ERROR",
                                  log_to_driver=False)
    try:
        if address is None:
            ray.init(resources={DEVICE_PREFIX + LOCAL_DEVICE: 1}, **kwargs)
            return "a local Ray started for this run (device 'local')"
        ray.init(address=address, **{k: v for k, v in kwargs.items() if k != "include_dashboard"})
    except (ConnectionError, RuntimeError, ValueError) as exc:
        first = first_line(exc, None)
        raise UsageError(f"cannot connect to the Ray cluster at {address}: {first[:200]}",
                         hint="start a head with 'ray start --head' and pass the address it prints") from None
    return f"Ray cluster at {address}"


@dataclass
class DeviceNode:
    name: str
    node_id: str
    ip: str
    cpus: float
    alive: bool = True
    resources: dict[str, float] = field(default_factory=dict)

    def describe(self) -> str:
        return f"node {self.ip} ({self.node_id[:8]})"


def nodes() -> list[dict[str, Any]]:
    return require_ray().nodes()


def device_nodes(all_nodes: list[dict[str, Any]] | None = None) -> dict[str, DeviceNode]:
    """Device name → the alive node that holds ``device:<name>``."""
    out: dict[str, DeviceNode] = {}
    for n in all_nodes if all_nodes is not None else nodes():
        if not n.get("Alive"):
            continue
        res = n.get("Resources") or {}
        for key in res:
            if key.startswith(DEVICE_PREFIX):
                out[key[len(DEVICE_PREFIX):]] = DeviceNode(key[len(DEVICE_PREFIX):], n["NodeID"],
                                                           n.get("NodeManagerAddress", "?"), float(res.get("CPU", 1)),
                                                           True, dict(res))
    return out


def node_names(all_nodes: list[dict[str, Any]] | None = None) -> dict[str, str]:
    """Node id → ``IP (id8)``, dead nodes included."""
    return {n["NodeID"]: f"{n.get('NodeManagerAddress', '?')} ({n['NodeID'][:8]})"
            for n in (all_nodes if all_nodes is not None else nodes())}
