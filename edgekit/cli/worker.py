"""``edgekit worker --device NAME --address HOST:PORT``: join a Ray cluster as a device node."""
from __future__ import annotations

import argparse
import shlex
import subprocess


def register(sub) -> None:
    p = sub.add_parser(
        "worker", help="join a Ray cluster as a device node (edgekit matrix/ci --cluster)",
        description="Start Ray on this machine as a node of the cluster at HOST:PORT holding the resource "
                    "device:NAME (quantity 1): 'edgekit matrix --cluster ...' then checks parity and measures "
                    "latency here, one artifact at a time. Prints the targets this machine can run and the one "
                    "command that makes another board a device. Needs pip install 'edgekit[cluster]'. "
                    "Leave with 'ray stop'. Guide: docs/fleet.md.")
    p.add_argument("--device", required=True, help="this device's name in reports, e.g. jetson-orin or pi5")
    p.add_argument("--address", required=True, help="the head's HOST:PORT (printed by 'ray start --head')")
    p.add_argument("--num-cpus", type=int, help="CPUs Ray may use here (default: all)")
    p.add_argument("--block", action="store_true", help="stay in the foreground until the node stops")
    p.add_argument("--dry-run", action="store_true", help="print the commands, start nothing")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from edgekit.cluster import require_ray
    from edgekit.cluster.worker import (available_targets, board_command, check_address, check_device_name,
                                        ray_start_command)
    from edgekit.console import Console

    console = Console(quiet=getattr(args, "quiet", False))
    device, address = check_device_name(args.device), check_address(args.address)
    if not args.dry_run:
        require_ray()
    targets = available_targets()
    console.table(["target", "runs here", "version / reason"], [[n, "yes" if ok else "no", why]
                                                                for n, ok, why in targets])
    runs = [n for n, ok, _ in targets if ok]
    console.print(f"device {device} can run: {', '.join(runs) or 'no target'}")
    cmd = ray_start_command(device, address, args.num_cpus, args.block)
    console.print(f"starting: {shlex.join(cmd)}")
    console.print(f"on another board: {board_command('NAME', address)}")
    if args.dry_run:
        return 0
    rc = subprocess.call(cmd)
    if rc != 0:
        console.warn(f"ray start exited with {rc}: see its messages above")
        return 2
    if not args.block:
        console.print(f"device {device} joined {address}; leave with 'ray stop'")
    return 0
