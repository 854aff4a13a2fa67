"""The x86-vs-aarch64 rows of the parity table.

For each emulated core, the artifact's final stage (and, for ONNX INT8, the shared Q/DQ graph
before it and the FP32 graph it was quantized from) runs in its own runtime inside the userland. Two
rows per stage and core:

* ``STAGE@aarch64``: against PyTorch FP32, with the stage's own tolerance, like every stage;
* ``STAGE x86↔aarch64``: against the same stage run on this host (fidelity across instruction
  sets), with :data:`FIDELITY`.

FIDELITY floors: FP32 must agree elementwise (max-abs 1e-4, the FP32 stage rule). INT8 does not:
x86 and ARM INT8 kernels accumulate, saturate and requantize differently (e.g. AVX2's 16-bit
saturating u8×s8 pair sums), so the same file differs by design; issue 24 measured
25.7–33.3 dB / cosine ≥ 0.998 for trained networks. The floor, 20 dB SQNR and cosine 0.99 (the
INT8 stage's own cosine gate), is 5 dB under the worst measured case, and a real kernel fault
(a wrong zero point, an overflowing accumulator, a mis-rounded requantization on a layer) lands
far below it. Top-1 agreement is reported, not gated: 1 flip in 32 crops is the measured norm.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np

from ..artifact import Artifact
from ..compare import Comparison, Tolerance
from .job import JobModel, run_job, runtime_for, usable_userland

FIDELITY = {
    "fp32": Tolerance(max_abs=1e-4),
    "fp16": Tolerance(cosine=0.999, sqnr_db=30.0),
    "int8": Tolerance(cosine=0.99, sqnr_db=20.0),
}
DEFAULT_CPUS = ("cortex-a76",)
DEFAULT_SAMPLES = 32


def parse_cpus(values: Sequence[str] | str | None) -> tuple[str, ...]:
    """``--arm-cpu cortex-a53,neoverse-n1`` (repeatable) → ('cortex-a53', 'neoverse-n1')."""
    if not values:
        return DEFAULT_CPUS
    if isinstance(values, str):
        values = [values]
    return tuple(c.strip() for v in values for c in str(v).split(",") if c.strip())


def arm_stages(stages: Sequence[Artifact]) -> list[Artifact]:
    """The final stage; for ONNX INT8 also the shared Q/DQ graph and the FP32 graph it was quantized
    from, so one run separates INT8 kernel differences from FP32 drift."""
    final = stages[-1]
    if final.format != "onnx" or final.precision != "int8":
        return [final]
    fp32 = [s for s in stages if s.format == "onnx" and s.precision == "fp32"]
    return fp32[-1:] + [s for s in stages if s.format == "onnx" and s.precision == "int8"]


def arm_rows(stages: Sequence[Artifact], pairs: Sequence[tuple[dict, dict]],
             tolerance: Callable[[Artifact], Tolerance], *, cpus: Sequence[str] = DEFAULT_CPUS,
             samples: int | None = None, threads: int | None = None, source: str = "",
             log: Callable[[str], None] = print, step=None) -> list[Comparison]:
    """Rows for the emulated runs. ``pairs``: (feed, torch FP32 outputs) on held-out feeds; the first
    ``samples`` of them are used (emulation is slow)."""
    from ..targets import get_target

    picked = arm_stages(stages)
    runtime = runtime_for(picked[-1].format)
    land = usable_userland(runtime)
    pairs = list(pairs)[: samples or DEFAULT_SAMPLES]
    feeds = [f for f, _ in pairs]
    names = [i.name for i in picked[-1].inputs]
    host: dict[str, list[dict[str, np.ndarray]]] = {}
    for s in picked:
        with get_target(s.target).open(s, threads=threads) as r:
            host[s.stage] = [r.infer(f) for f in feeds]
            host_name = r.name
    models = [JobModel(f"s{k}", s.path, s.precision, s.meta.get("output_shapes")) for k, s in enumerate(picked)]
    rows: list[Comparison] = []
    for cpu in cpus:
        title = f"aarch64 emulation (QEMU_CPU={cpu}): {', '.join(s.stage for s in picked)} on {len(feeds)} feeds"
        with (step(title) if step else _null(log, title)) as d:
            res = run_job(land, runtime, models, feeds, names, cpu, threads=threads or 1)
            d["summary"] = ", ".join(f"{s.stage} {res.info['seconds'][m.key]:.0f}s" for s, m in zip(picked, models))
        log(f"  {res.describe()}")
        runner = f"{runtime} {res.info.get('runtime_version', '?')} aarch64/{cpu}"
        for s, m in zip(picked, models):
            outs = res.outputs[m.key]
            vs_torch = Comparison(stage=f"{s.stage}@aarch64", runner=runner, precision=s.precision,
                                  tolerance=tolerance(s), inputs_source=source, note=res.describe())
            fidelity = Comparison(stage=f"{s.stage} x86↔aarch64", runner=f"{host_name} vs {runner}",
                                  precision=s.precision, tolerance=FIDELITY.get(s.precision, Tolerance()),
                                  inputs_source=source, note=res.describe())
            for (_, ref), h, a in zip(pairs, host[s.stage], outs):
                vs_torch.add(ref, _renamed(a, ref))
                fidelity.add(h, _renamed(a, h))
            rows += [vs_torch, fidelity]
    return rows


def _renamed(outs: dict[str, np.ndarray], like: dict[str, Any]) -> dict[str, np.ndarray]:
    """Outputs are matched by position (runtimes name them differently)."""
    return dict(zip(like, outs.values()))


class _null:
    def __init__(self, log, title):
        self.log, self.title = log, title

    def __enter__(self):
        self.log(f"• {self.title} ...")
        return {}

    def __exit__(self, *exc):
        return None


TARGET_FORMAT = {"onnx": "onnx", "ncnn": "ncnn", "executorch": "pte"}


def precheck(request) -> None:
    """Before any work: the arch is known, the target has an aarch64 runner, the userland is set up."""
    from ..errors import UsageError

    if request.arch != "aarch64":
        raise UsageError(f"unknown --arch '{request.arch}'", hint="use --arch aarch64")
    fmt = TARGET_FORMAT.get(request.target)
    if fmt is None:
        raise UsageError(f"no aarch64 runner for target '{request.target}'",
                         hint=f"--arch aarch64 works with --target {' / '.join(t for t, f in TARGET_FORMAT.items() if f != 'pte')}")
    usable_userland(runtime_for(fmt))


def hook(stages: Sequence[Artifact], pairs, tolerance, request, console, source: str = "") -> list[Comparison]:
    """What export / parity call after their own parity: [] unless ``request.arch`` is aarch64
    (``request``: the ``ExportRequest`` of the export, or what ``edgekit parity`` was given)."""
    arch = request.arch
    if not arch or arch in ("x86_64", "host"):
        return []
    if arch != "aarch64":
        from ..errors import UsageError

        raise UsageError(f"unknown --arch '{arch}'", hint="use --arch aarch64")
    return arm_rows(stages, pairs, tolerance, cpus=parse_cpus(request.arm_cpus or None),
                    samples=request.arm_samples, threads=request.threads, source=source,
                    log=console.info, step=console.step)
