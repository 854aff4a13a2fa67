"""TensorRT target: a strongly typed engine built from the precision-encoded ONNX.

Precision lives in the graph (DESIGN §4): the pipeline hands over the simplified ONNX (FP32),
the FP16-cast ONNX or the Q/DQ ONNX (INT8) and the engine is built as a *strongly typed*
network, so TensorRT takes every tensor's type from the graph. No precision builder flag and
no INT8 calibrator is used: TensorRT 10.1 deprecated them and 11.0 removed them (NVIDIA,
"Removed Python APIs and Replacements", https://docs.nvidia.com/deeplearning/tensorrt/latest/
api/migration/tensorrt-10x-to-11x-python-api-reference.html — replacement: "Explicit
quantization with Q/DQ nodes" / "Strong typing").

Version handling (Python API, https://docs.nvidia.com/deeplearning/tensorrt/latest/_static/
python-api/infer/Core/Builder.html):
* 10.x: ``create_network(1 << int(NetworkDefinitionCreationFlag.STRONGLY_TYPED))``;
  ``EXPLICIT_BATCH`` is not set — "Ignored because networks are always explicit batch in
  TensorRT 10.0" — and it no longer exists in 11.x.
* 11.x: the STRONGLY_TYPED flag is "retained for API compatibility but is ignored" (strong
  typing is always on, .../11.0.0/_static/python-api/infer/Core/Builder.html); we still pass it
  when the enum has it, and pass 0 if a later release drops it.

FP32 engines are built with TF32 off (``config.clear_flag(BuilderFlag.TF32)``): TF32 alone moved a
MobileNetV3's FP32 output by ~3e-4 (NVIDIA/TensorRT#4052). ``--tf32`` opts in and the artifact
records a looser FP32 tolerance. Builder knobs used: ``set_memory_pool_limit(MemoryPoolType.
WORKSPACE, bytes)``, ``create_optimization_profile`` / ``set_shape`` / ``add_optimization_profile``,
``create_timing_cache`` / ``set_timing_cache`` / ``get_timing_cache().serialize()`` (timing cache:
"Optimizing Builder Performance", https://docs.nvidia.com/deeplearning/tensorrt/latest/
performance/builder-performance.html), ``build_serialized_network``.
"""
from __future__ import annotations

import importlib
import importlib.metadata
import os
import re
import tempfile
import time
from pathlib import Path
from typing import Any

from edgekit.artifact import Artifact, tool_versions
from edgekit.contracts import ExportContext, Exporter, ExportRequest, Option
from edgekit.errors import ExportError, MissingDependencyError, UnavailableError, UsageError

from .runner import TRT_HINT, TensorRTRunner, cuda_device, device_index

MIN_VERSION = (10, 1)
DEFAULT_MAX_BATCH = 32
# FP32 parity with TF32 on: the #4052 shift was ~3e-4 on logits; elementwise 2e-3 and cosine 0.9999
TF32_TOLERANCE = {"max_abs": 2e-3, "cosine": 0.9999}


def version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", version)[:3])


def installed_version() -> str | None:
    """The installed TensorRT version from package metadata (no import, no GPU)."""
    for dist in ("tensorrt", "tensorrt-cu12", "tensorrt-cu13", "tensorrt_cu12", "tensorrt-cu11"):
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def import_tensorrt():
    """``import tensorrt`` or a MissingDependencyError naming it, with NVIDIA's index in the hint."""
    try:
        trt = importlib.import_module("tensorrt")
    except ImportError as exc:
        name = getattr(exc, "name", None)
        if name not in (None, "tensorrt"):  # the package is there but one of its libraries is not
            raise MissingDependencyError(name, "tensorrt", "the TensorRT target",
                                         hint=f"tensorrt failed to import ({exc}); {TRT_HINT}") from exc
        raise MissingDependencyError("tensorrt", "tensorrt", "the TensorRT target", hint=TRT_HINT) from exc
    except OSError as exc:  # a wheel whose CUDA libraries cannot be loaded
        raise MissingDependencyError("tensorrt", "tensorrt", "the TensorRT target",
                                     hint=f"tensorrt failed to load its libraries ({exc}); {TRT_HINT}") from exc
    return trt


def capturing_logger(trt):
    """A ``trt.ILogger`` (subclass of the lazily imported class) that keeps warnings and errors
    for our messages instead of printing them."""

    class _Logger(trt.ILogger):
        def __init__(self):
            trt.ILogger.__init__(self)
            self.messages: list[tuple[Any, str]] = []

        def log(self, severity, msg):  # noqa: D401 - TensorRT callback
            if int(severity) <= int(trt.ILogger.Severity.WARNING):
                self.messages.append((int(severity), msg))

        def last_error(self) -> str:
            errs = [m for s, m in self.messages if s <= int(trt.ILogger.Severity.ERROR)]
            return (errs[-1] if errs else "no error message from TensorRT").strip()[:300]

    return _Logger()


def default_timing_cache(trt_version: str, gpu: dict[str, Any]) -> Path:
    """~/.cache/edgekit/tensorrt/timing-<trt>-<gpu>-sm<cc>.cache (XDG_CACHE_HOME honoured)."""
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "edgekit" / "tensorrt"
    slug = re.sub(r"[^A-Za-z0-9]+", "-", gpu["name"]).strip("-").lower() or "gpu"
    return root / f"timing-{trt_version}-{slug}-sm{gpu['compute_capability'].replace('.', '')}.cache"


class TensorRTTarget(Exporter):
    name = "tensorrt"
    aliases = ("trt", "tensorrt-engine")
    description = "NVIDIA TensorRT engine (strongly typed; FP16/INT8 from the graph), needs an NVIDIA GPU"
    precisions = ("fp32", "fp16", "int8")
    source = "onnx"
    extra = "tensorrt"
    packages = ("tensorrt", "onnx")
    signed_activations = True   # INT8 Q/DQ: zero point 0, signed (qdq.py)
    options = (
        Option("--workspace", "workspace", "TensorRT builder workspace limit in MiB (default: TensorRT's)", type=int),
        Option("--tf32", "tf32", "allow TF32 in FP32 layers (faster on Ampere+, ~1e-3 error; default off)",
               type=None, default=False, action="store_true"),
        Option("--timing-cache", "timing_cache", "timing cache file (default ~/.cache/edgekit/tensorrt/...)",
               type=Path),
        Option("--min-batch", "min_batch", "smallest batch of the --dynamic-batch profile (default 1)", type=int),
        Option("--opt-batch", "opt_batch", "batch TensorRT tunes for with --dynamic-batch (default --batch)",
               type=int),
        Option("--max-batch", "max_batch", f"largest batch of the --dynamic-batch profile "
               f"(default {DEFAULT_MAX_BATCH})", type=int),
    )

    # -- availability ------------------------------------------------------------------------
    def available(self) -> tuple[bool, str]:
        try:
            trt = import_tensorrt()
        except MissingDependencyError as exc:
            return False, f"{exc.message} (wheels: pip install --extra-index-url https://pypi.nvidia.com tensorrt)"
        if version_tuple(trt.__version__) < MIN_VERSION:
            return False, f"TensorRT {trt.__version__} is older than {'.'.join(map(str, MIN_VERSION))}"
        gpu = cuda_device()
        if gpu is None:
            return False, "TensorRT is installed but no CUDA GPU was found"
        return True, f"TensorRT {trt.__version__} on {gpu['name']} (sm {gpu['compute_capability']})"

    def check(self, request: ExportRequest) -> None:
        super().check(request)
        self.profile(request)  # option errors are usage errors, dry run or not
        if request.dry_run:
            return  # the dry run stops before the engine build: nothing GPU-related to check
        try:
            trt = import_tensorrt()
        except MissingDependencyError as exc:  # a machine without TensorRT can still make and check the ONNX
            exc.hint = f"{exc.hint}; or add --dry-run to write and lint the Q/DQ ONNX TensorRT would build from"
            raise
        if version_tuple(trt.__version__) < MIN_VERSION:
            raise UnavailableError(f"TensorRT {trt.__version__} is too old: edgekit builds strongly typed engines "
                                   f"with TensorRT >= {'.'.join(map(str, MIN_VERSION))}", hint=TRT_HINT)
        if cuda_device(device_index(request.device)) is None:
            raise UnavailableError("no CUDA GPU found: TensorRT builds and runs engines on NVIDIA GPUs only",
                                   hint="run on a machine with an NVIDIA GPU and driver, or use --dry-run to "
                                        "produce and lint the ONNX that TensorRT would build from")

    def profile(self, request: ExportRequest) -> dict[str, int] | None:
        """{"min", "opt", "max"} batch of the optimization profile, or None for a static batch."""
        o = self.settings(request)
        given = {k: getattr(o, f"{k}_batch") for k in ("min", "opt", "max")}
        if o.workspace is not None and o.workspace <= 0:
            raise UsageError(f"--workspace must be a positive number of MiB, got {o.workspace}")
        if not request.dynamic_batch:
            if any(v is not None for v in given.values()):
                raise UsageError("--min-batch/--opt-batch/--max-batch need --dynamic-batch")
            return None
        lo = given["min"] if given["min"] is not None else 1
        opt = given["opt"] if given["opt"] is not None else max(request.batch, lo)
        hi = given["max"] if given["max"] is not None else max(DEFAULT_MAX_BATCH, opt)
        if not 1 <= lo <= opt <= hi:
            raise UsageError(f"bad batch profile min={lo} opt={opt} max={hi}", hint="need 1 <= min <= opt <= max")
        return {"min": lo, "opt": opt, "max": hi}

    def tolerance_overrides(self, request: ExportRequest) -> dict[str, float]:
        """Parity overrides for this request: TF32 loosens the FP32 elementwise gate."""
        tf32 = bool(self.settings(request).tf32)
        return dict(TF32_TOLERANCE) if tf32 and request.precision == "fp32" else {}

    # -- lint --------------------------------------------------------------------------------
    def lint(self, artifact: Artifact, trt_version: str | None = None) -> list[dict[str, Any]]:
        """Pre-flight checks of an ONNX stage against TensorRT's documented parser support (no GPU).
        The version defaults to the installed TensorRT's major (read from package metadata), else 10."""
        from .lint import lint_onnx

        if artifact.format != "onnx":
            raise UsageError(f"the TensorRT lint reads ONNX; {artifact.path.name} is {artifact.format}")
        return lint_onnx(artifact.path, table_version(trt_version or installed_version()))

    # -- build -------------------------------------------------------------------------------
    def export(self, ctx: ExportContext, workdir: Path) -> Artifact:
        from .lint import has_errors

        src, request = ctx.source, ctx.request
        if src is None or src.format != "onnx":
            raise ExportError("tensorrt", "no ONNX stage to build the engine from")
        trt = import_tensorrt()
        gpu = cuda_device(device_index(request.device))
        if gpu is None:
            raise UnavailableError("no CUDA GPU found: TensorRT builds engines on NVIDIA GPUs only")
        problems = self.lint(src, trt.__version__)
        if has_errors(problems):
            first = next(p for p in problems if p["level"] == "error")
            raise ExportError("tensorrt", f"the ONNX fails TensorRT's pre-flight lint: node '{first['node']}': "
                              f"{first['message']}", hint=f"run 'edgekit lint {src.path}' for all problems")
        opts = self.settings(request)
        logger = capturing_logger(trt)
        builder = trt.Builder(logger)
        network = builder.create_network(network_flags(trt))
        parser = trt.OnnxParser(network, logger)
        if not parser.parse_from_file(str(src.path)):
            errors = [parser_error_text(parser.get_error(i)) for i in range(parser.num_errors)]
            raise ExportError("tensorrt", f"TensorRT's ONNX parser rejected {src.path.name}: "
                              f"{(errors[0] if errors else logger.last_error())[:300]}")
        config = builder.create_builder_config()
        if opts.workspace:
            config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(opts.workspace) << 20)
        tf32 = bool(opts.tf32)
        tf32_flag = getattr(trt.BuilderFlag, "TF32", None)
        if tf32_flag is not None:
            (config.set_flag if tf32 else config.clear_flag)(tf32_flag)
        profile = self._add_profile(trt, builder, network, config, request)
        cache_path = Path(opts.timing_cache) if opts.timing_cache else default_timing_cache(trt.__version__, gpu)
        cache_hit = self._load_timing_cache(config, cache_path, ctx)
        t0 = time.perf_counter()
        serialized = builder.build_serialized_network(network, config)
        seconds = time.perf_counter() - t0
        if serialized is None:
            raise ExportError("tensorrt", f"engine build failed: {logger.last_error()}",
                              hint="rerun with --debug; try a larger --workspace")
        engine_path = Path(workdir) / f"{ctx.stem}.engine"
        engine_path.write_bytes(bytes(serialized))
        self._save_timing_cache(config, cache_path, ctx)
        meta = {"tensorrt_version": trt.__version__, "gpu_name": gpu["name"],
                "compute_capability": gpu["compute_capability"], "strongly_typed": True, "tf32": tf32,
                "profile": profile, "workspace_mib": opts.workspace, "build_seconds": round(seconds, 2),
                "timing_cache": str(cache_path), "timing_cache_loaded": cache_hit,
                "lint_warnings": sum(p["level"] == "warning" for p in problems)}
        if self.tolerance_overrides(request):
            meta["tolerance"] = self.tolerance_overrides(request)
        return Artifact(path=engine_path, stage="tensorrt", format="tensorrt-engine", precision=src.precision,
                        target="tensorrt", inputs=src.inputs, outputs=src.outputs, parent=src.sha256, meta=meta,
                        tools=tool_versions(*self.packages))

    def _add_profile(self, trt, builder, network, config, request: ExportRequest) -> dict[str, Any] | None:
        dynamic = []
        for i in range(network.num_inputs):
            t = network.get_input(i)
            dims = tuple(int(d) for d in t.shape)
            if any(d < 0 for d in dims[1:]):
                raise ExportError("tensorrt", f"input '{t.name}' has dynamic non-batch dimensions {dims}",
                                  hint="export with a fixed input shape; only the batch may be dynamic")
            if dims and dims[0] < 0:
                dynamic.append((t.name, dims))
        if not dynamic:
            return None
        batch = self.profile(request) or {"min": request.batch, "opt": request.batch, "max": request.batch}
        profile = builder.create_optimization_profile()
        for name, dims in dynamic:
            profile.set_shape(name, (batch["min"], *dims[1:]), (batch["opt"], *dims[1:]), (batch["max"], *dims[1:]))
        config.add_optimization_profile(profile)
        return {"inputs": [n for n, _ in dynamic], **batch}

    @staticmethod
    def _load_timing_cache(config, path: Path, ctx: ExportContext) -> bool:
        blob = b""
        if path.is_file():
            try:
                blob = path.read_bytes()
            except OSError as exc:
                ctx.warn(f"cannot read the TensorRT timing cache {path}: {exc}")
        try:
            cache = config.create_timing_cache(blob)
        except Exception:  # noqa: BLE001 - an unreadable cache file is replaced, not fatal
            cache = None
        if cache is None or not config.set_timing_cache(cache, False):  # ignore_mismatch=False: a foreign cache is not used
            ctx.warn(f"TensorRT timing cache {path} does not match this GPU/TensorRT; starting a new one")
            config.set_timing_cache(config.create_timing_cache(b""), False)
            return False
        return bool(blob)

    @staticmethod
    def _save_timing_cache(config, path: Path, ctx: ExportContext) -> None:
        try:
            data = bytes(config.get_timing_cache().serialize())
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".timing-", dir=path.parent)
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            os.replace(tmp, path)
        except OSError as exc:  # a cache is an optimisation: never fail the export for it
            ctx.warn(f"could not write the TensorRT timing cache {path}: {exc}")

    # -- run ---------------------------------------------------------------------------------
    def check_device(self, device: str | None) -> str | None:
        if device is not None:
            device_index(device)  # 'cuda', 'cuda:N', 'gpu', 'N'; anything else (CPU) is a usage error
        return device

    def open(self, artifact: Artifact, device: str | None = None, **options: Any) -> TensorRTRunner:
        if artifact.format != "tensorrt-engine":
            raise UsageError(f"{artifact.path.name} is {artifact.format}, not a TensorRT engine")
        return TensorRTRunner(artifact.path, artifact.inputs, artifact.outputs, device=device,
                              expected=artifact.meta)


def parser_error_text(err) -> str:
    """An ``IParserError`` as one line: node name, operator and description where the API has them."""
    def call(name: str) -> str:
        fn = getattr(err, name, None)
        try:
            return str(fn()) if callable(fn) else ""
        except Exception:  # noqa: BLE001 - older parsers lack some accessors
            return ""

    desc = call("desc") or str(err)
    node, op = call("node_name"), call("node_operator")
    return f"node '{node}' ({op}): {desc}" if node else desc


def table_version(version: str | None) -> str:
    """The operator table for a TensorRT version: its major, clamped to the tables we have (10, 11)."""
    major = version_tuple(version)[0] if version and version_tuple(version) else 10
    return str(min(max(major, 10), 11))


def network_flags(trt) -> int:
    """Creation flags for a strongly typed network on TensorRT 10.x and 11.x (see module doc)."""
    strongly_typed = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    if strongly_typed is None:
        if version_tuple(trt.__version__) < (11,):
            raise UnavailableError(f"TensorRT {trt.__version__} has no strongly typed networks", hint=TRT_HINT)
        return 0  # strong typing is always on in 11.x
    return 1 << int(strongly_typed)
