"""``edgekit worker``: this machine joins a Ray cluster as device ``NAME``.

It wraps ``ray start --address HOST:PORT --resources '{"device:NAME": 1}'``: the custom
resource, quantity 1, is what the matrix's device tasks ask for, so this machine times
one artifact at a time and never shares its CPUs with an export while it does.
"""
from __future__ import annotations

import json
import re
import shlex
import shutil
import sys
from pathlib import Path

from ..errors import UsageError

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def check_device_name(name: str) -> str:
    if not _NAME.match(name or ""):
        raise UsageError(f"device name {name!r} is not usable as a Ray resource",
                         hint="use letters, digits, '-', '_' or '.', e.g. --device jetson-orin")
    return name


def check_address(address: str) -> str:
    host, _, port = (address or "").rpartition(":")
    if address.startswith("ray://") or not host or not port.isdigit():
        raise UsageError(f"--address {address!r} is not a head's HOST:PORT",
                         hint="pass what 'ray start --head' printed, e.g. --address 192.168.1.10:6379")
    return address


def ray_executable() -> str:
    beside = Path(sys.executable).parent / "ray"
    return str(beside) if beside.is_file() else (shutil.which("ray") or "ray")


def ray_start_command(device: str, address: str, num_cpus: int | None = None, block: bool = False) -> list[str]:
    cmd = [ray_executable(), "start", f"--address={address}",
           f"--resources={json.dumps({f'device:{device}': 1}, separators=(',', ':'))}"]
    if num_cpus:
        cmd.append(f"--num-cpus={num_cpus}")
    if block:
        cmd.append("--block")
    return cmd


def board_command(device: str, address: str) -> str:
    """The one line to run on a board to make it this fleet's device ``device``."""
    return (f"pip install 'edgekit[all,cluster]' && edgekit worker --device {shlex.quote(device)} "
            f"--address {shlex.quote(address)}")


def available_targets() -> list[tuple[str, bool, str]]:
    from ..errors import EdgekitError
    from ..targets import list_targets

    out = []
    for t in list_targets():
        try:
            ok, why = t.available()
        except EdgekitError as exc:
            ok, why = False, exc.message
        out.append((t.name, bool(ok), str(why)))
    return out
