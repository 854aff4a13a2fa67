"""The protocols every target implements, and the request that drives an export.

* An **Exporter** builds an artifact for one target: ``check`` fails fast before any
  work, ``export`` writes the artifact into a work folder, ``open`` returns a Runner.
* A **Runner** executes an artifact: a context manager with ``inputs``, ``outputs``
  and ``infer(feeds) -> {name: array}``. The PyTorch reference is a Runner too;
  parity and benchmarks only ever see Runners.
* **Feeds** are a re-iterable ``Iterable[dict[str, np.ndarray]]``: one shape serves
  calibration, parity and benchmarks.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, make_dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Iterable, Mapping, Protocol, runtime_checkable

import numpy as np

from .specs import InputSpec

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from .artifact import Artifact
    from .models.registry import ModelSpec

Feed = Mapping[str, np.ndarray]
Feeds = Iterable[Feed]


@runtime_checkable
class Runner(Protocol):
    """Executes one artifact. Use as ``with runner: runner.infer(feed)``."""

    name: str            # e.g. "onnxruntime-cpu", "openvino-CPU", "torch"
    inputs: tuple[InputSpec, ...]
    outputs: tuple[str, ...]

    def __enter__(self) -> "Runner": ...
    def __exit__(self, *exc: object) -> None: ...
    def infer(self, feeds: Feed) -> dict[str, np.ndarray]: ...


@dataclass(frozen=True)
class Option:
    """A target-specific command-line option (``--device``, ``--tf32`` ...)."""

    flag: str
    dest: str
    help: str
    type: Callable[[str], Any] | None = str
    default: Any = None
    choices: tuple[Any, ...] | None = None
    action: str | None = None  # "store_true" for switches


@dataclass
class ExportRequest:
    """What the user asked for. Built by the CLI or by ``edgekit.export(...)``."""

    model: str
    target: str = "onnx"
    precision: str = "fp32"
    out: Path | None = None
    batch: int = 1
    dynamic_batch: bool = False
    input_shape: tuple[int, ...] | None = None
    opset: int | None = None
    weights: Path | None = None
    pretrained: bool = False
    calib: Path | None = None
    calib_method: str | None = None
    simplify: bool = True
    simplifier: str = "onnxsim"
    device: str | None = None
    threads: int | None = None
    dry_run: bool = False
    force: bool = True
    parity: bool = True
    localize: bool = False
    bench: bool = True
    samples: int | None = None       # held-out parity samples (default: 200 for fp16/int8, 32 for fp32)
    calib_samples: int | None = None  # INT8 calibration samples (default: edgekit.resources.CALIB_SAMPLES)
    guard_seconds: float | None = None  # seconds per runner of the INT8 latency guards (None: the target's)
    options: dict[str, Any] = field(default_factory=dict)
    tolerance: dict[str, Any] = field(default_factory=dict)
    arch: str | None = None          # "aarch64": also run the final stage emulated (edgekit.arm)
    arm_cpus: tuple[str, ...] = ()   # QEMU_CPU models to emulate (default edgekit.arm.compare.DEFAULT_CPUS)
    arm_samples: int | None = None   # held-out feeds for the emulated run (default 32)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for k in ("out", "weights", "calib"):
            d[k] = None if d[k] is None else str(d[k])
        # ``edgekit parity`` may run from another folder: the paths as given, and where they were
        for k in ("weights", "calib"):
            d[f"{k}_resolved"] = None if d[k] is None else str(Path(d[k]).expanduser().resolve())
        d["input_shape"] = list(self.input_shape) if self.input_shape else None
        return d


@dataclass
class ExportContext:
    """Everything an exporter may use. ``source`` is the newest ONNX stage for ONNX-fed
    targets (already precision-encoded: FP16 casts or Q/DQ); torch-fed targets use
    ``model`` and, for INT8, ``calib_feeds``."""

    request: ExportRequest
    spec: "ModelSpec"
    model: "torch.nn.Module"
    inputs: tuple[InputSpec, ...]
    source: "Artifact | None"
    calib_feeds: Feeds | None
    heldout_feeds: Feeds
    log: Callable[[str], None] = print
    warn: Callable[[str], None] = print
    stem: str = "model"
    fp32_source: "Artifact | None" = None  # the last FP32 ONNX stage (for INT8-vs-FP32 latency guards)
    progress: Callable[[str, int, int], None] | None = None  # (phase, done, total) of a long loop


class Exporter:
    """Base for targets. Subclasses set the class attributes and implement the methods.

    ``source`` says what the target consumes: ``"onnx"`` targets get the
    precision-encoded ONNX from the pipeline (DESIGN §4: precision lives in the
    graph); ``"torch"`` targets convert from the PyTorch module themselves.
    """

    name: ClassVar[str] = ""
    aliases: ClassVar[tuple[str, ...]] = ()
    description: ClassVar[str] = ""
    precisions: ClassVar[tuple[str, ...]] = ("fp32",)
    source: ClassVar[str] = "onnx"
    extra: ClassVar[str] = "onnx"          # pip extra that installs the backend
    packages: ClassVar[tuple[str, ...]] = ()  # distributions whose versions go in the manifest
    options: ClassVar[tuple[Option, ...]] = ()
    # The runtime takes signed INT8 activations only (TensorRT): the shared Q/DQ graph then holds no
    # uint8 activation (calibration/qdq.py)
    signed_activations: ClassVar[bool] = False
    # The target re-derives the activation grids in PyTorch (ExecuTorch, Core ML): when every attempt
    # on its calibration misses the bar, the export tries the other signedness (calibration/spares.py)
    alternate_calibration: ClassVar[bool] = False
    alternate_options: ClassVar[dict] = {}  # Int8Options fields the alternate calibration also sets
    calibration_options: ClassVar[dict] = {}  # Int8Options fields the target's first calibration sets

    def calibration_options_for(self, request: "ExportRequest") -> dict:
        """The Int8Options fields this request's first calibration sets (default: ``calibration_options``)."""
        return dict(self.calibration_options)

    def calibration_alternatives(self, request: "ExportRequest", trained: bool) -> list[dict]:
        """Int8Options fields of further calibrations that this target's artifact may run faster
        from, each weighed against the first by :meth:`faster_calibration` (default: none)."""
        return []

    def faster_calibration(self, calibrations: list, fp32, feeds, request: "ExportRequest", log) -> tuple[int, dict]:
        """(index into ``calibrations`` of the Q/DQ stage to deliver, what was measured): the one
        this target runs fastest among those whose calibration gate passed (default: the first)."""
        return 0, {}

    def available(self) -> tuple[bool, str]:
        """(True, version) when the backend can run here, else (False, why not)."""
        raise NotImplementedError

    def check(self, request: ExportRequest) -> None:
        """Raise an EdgekitError before any work if this request cannot succeed here."""
        from .errors import UsageError

        if request.precision not in self.precisions:
            raise UsageError(f"target '{self.name}' does not support {request.precision}",
                             hint=f"supported: {', '.join(self.precisions)}")
        self.check_device(request.device)

    def devices(self) -> tuple[str, ...]:
        """The ``--device`` values this target's runner can honour on this machine (CPU for
        targets whose runtime here runs on the CPU only)."""
        return ("CPU",)

    def check_device(self, device: str | None) -> str | None:
        """Refuse (exit 2) a ``--device`` this target cannot run on, before any work: an option
        is honoured or refused, never recorded and then ignored. Returns the device."""
        from .errors import UsageError

        if device is None:
            return None
        known = self.devices()
        if str(device).strip().upper() not in {d.upper() for d in known}:
            raise UsageError(f"target '{self.name}' cannot run on device '{device}' here; it runs on "
                             f"{', '.join(known) or 'no device'}",
                             hint="drop --device, or choose a target that runs on that device "
                                  "(openvino: GPU/NPU, tensorrt: cuda)")
        return device

    def handles_precision(self, request: ExportRequest) -> bool:
        """True when this target quantizes / converts precision itself (NNCF, CoreML,
        ExecuTorch): the pipeline then hands it the FP32 source and the feeds instead of
        a precision-encoded ONNX."""
        return self.source != "onnx"

    def builds_artifact(self, request: ExportRequest) -> bool:
        """False when the pipeline's last ONNX stage already is the deliverable (the
        ``onnx`` target at FP32/FP16): ``export`` is then not called."""
        return True

    def lint(self, artifact: "Artifact") -> list[dict[str, Any]]:
        """Pre-flight checks of the source artifact for this target (no backend needed).
        Each problem: {"level": "error"|"warning", "node": str, "message": str}."""
        return []

    def export(self, ctx: ExportContext, workdir: Path) -> "Artifact":
        raise NotImplementedError

    def open(self, artifact: "Artifact", device: str | None = None, **options: Any) -> Runner:
        raise NotImplementedError

    def settings(self, request: ExportRequest) -> Any:
        """This target's options in ``request`` as a typed, frozen record: one field per declared
        :class:`Option`, its default where the request leaves it unset (``None``), ints and
        floats converted. ``settings(req).coreml_calib_samples`` instead of a string lookup."""
        record = options_record(type(self))
        values = {}
        for o in self.options:
            v = (request.options or {}).get(o.dest)
            if v is None:
                v = o.default
            elif o.type in (int, float) and not isinstance(v, bool):
                v = o.type(v)
            values[o.dest] = v
        return record(**values)


@lru_cache(maxsize=None)
def options_record(cls: type) -> type:
    """The frozen dataclass ``<Target>Options`` built from ``cls.options``."""
    def kind(o: Option) -> Any:
        if o.action == "store_true":
            return bool
        return o.type if isinstance(o.type, type) else Any
    fields = [(o.dest, kind(o), field(default=o.default)) for o in cls.options]
    return make_dataclass(f"{cls.__name__}Options", fields, frozen=True)
