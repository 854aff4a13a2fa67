"""``edgekit arm setup|info``: the emulated aarch64 userland (issue 24), and the ``--arch`` options
that ``export`` and ``parity`` share."""
from __future__ import annotations

import argparse


def add_arch_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("ARM emulation (needs 'edgekit arm setup' once)")
    g.add_argument("--arch", choices=("aarch64",),
                   help="also run the final stage in its own runtime inside an emulated aarch64 userland and add "
                        "x86-vs-aarch64 rows to the parity table")
    g.add_argument("--arm-cpu", dest="arm_cpus", action="append", metavar="CPU",
                   help="QEMU_CPU model(s) to emulate, comma-separated or repeated, e.g. cortex-a53 (no "
                        "dot-product), neoverse-n1 / cortex-a76 (dot-product), max (i8mm, SVE); default cortex-a76")
    g.add_argument("--arm-samples", type=int, metavar="N", help="held-out feeds for the emulated run (default 32)")


def register(sub) -> None:
    p = sub.add_parser("arm", help="set up / inspect the emulated aarch64 userland",
                       description="Parity on ARM kernels without a board: a Debian arm64 userland run under "
                                   "qemu-user, built once into a cache folder ($EDGEKIT_ARM_CACHE or "
                                   "~/.cache/edgekit/arm). Needs root, binfmt_misc, qemu-user-static, debootstrap.")
    asub = p.add_subparsers(dest="arm_command", metavar="SUBCOMMAND")
    s = asub.add_parser("setup", help="build the userland once (idempotent; later runs are instant)")
    s.add_argument("--runtime", dest="runtimes", action="append", metavar="NAME",
                   help="runtime(s) to install, pinned to the host's version: onnxruntime (default), ncnn; "
                        "repeat or comma-separate")
    s.set_defaults(func=run_setup)
    i = asub.add_parser("info", help="show the userland, and the CPU features each emulated core reports")
    i.add_argument("--arm-cpu", dest="arm_cpus", action="append", metavar="CPU",
                   help="QEMU_CPU model(s) to probe (default cortex-a53,cortex-a76,max)")
    i.set_defaults(func=run_info)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


def run_setup(args: argparse.Namespace) -> int:
    from edgekit.arm.setup import setup
    from edgekit.console import Console

    console = Console(quiet=args.quiet)
    runtimes = [r.strip() for v in (args.runtimes or ["onnxruntime"]) for r in v.split(",") if r.strip()]
    land = setup(runtimes, log=console.print, step=console.step)
    console.print(f"runtimes: {', '.join(land.runtimes())}")
    return 0


def run_info(args: argparse.Namespace) -> int:
    from edgekit.arm.compare import parse_cpus
    from edgekit.arm.job import run_job, usable_userland
    from edgekit.console import Console

    console = Console(quiet=args.quiet)
    land = usable_userland("onnxruntime")
    stamp = land.stamp() or {}
    console.print(f"userland: {land.folder} (Debian {stamp.get('release')} {stamp.get('arch')}, "
                  f"python {stamp.get('python')})")
    console.print("pins: " + ", ".join(f"{k}=={v}" for k, v in sorted(stamp.get("pins", {}).items())))
    for cpu in parse_cpus(args.arm_cpus or ["cortex-a53,cortex-a76,max"]):
        for runtime in land.runtimes():
            res = run_job(land, runtime, [], [], [], cpu)
            console.print(f"{cpu} / {runtime}: {res.info.get('kernels')}")
        console.print(f"{cpu}: features {' '.join(res.info.get('features', []))}")
    return 0
