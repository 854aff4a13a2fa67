"""Run a TensorRT engine: deserialize, bind tensors by name, ``execute_async_v3``.

Device buffers come from torch's CUDA tensors when a CUDA build of torch is present, else from
cuda-python (``cuda.bindings.runtime``, or ``cuda.cudart`` in cuda-python < 12.6). An engine
built by another TensorRT version or for another GPU architecture is refused with an
:class:`ArtifactError` before TensorRT is asked to deserialize it.

TensorRT Python API relied on (https://docs.nvidia.com/deeplearning/tensorrt/latest/_static/
python-api/): ``Runtime.deserialize_cuda_engine``; ``ICudaEngine.num_io_tensors``,
``get_tensor_name``, ``get_tensor_mode`` (``TensorIOMode.INPUT``), ``get_tensor_dtype``;
``IExecutionContext.set_input_shape``, ``get_tensor_shape``, ``set_tensor_address``,
``execute_async_v3(stream_handle)``; ``nptype``. The name-based I/O API and
``execute_async_v3`` are the 10.x API and unchanged in 11.x (NVIDIA "Migrating Python Code from
TensorRT 8.x to 10.x" and "... 10.x to 11.x").
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edgekit.contracts import Feed
from edgekit.errors import ArtifactError, UnavailableError
from edgekit.specs import InputSpec

TRT_HINT = ("pip install 'edgekit[tensorrt]' (TensorRT wheels come from NVIDIA's index: "
            "pip install --extra-index-url https://pypi.nvidia.com tensorrt)")


# -- the GPU -------------------------------------------------------------------------------------
def _cudart():
    try:
        from cuda.bindings import runtime as cudart  # cuda-python >= 12.6
    except ImportError:
        from cuda import cudart  # type: ignore[no-redef]  # older cuda-python
    return cudart


def _torch_cuda():
    try:
        import torch
    except ImportError:
        return None
    try:
        return torch if torch.cuda.is_available() else None
    except Exception:  # noqa: BLE001 - a broken CUDA install reads as "no GPU"
        return None


def cuda_device(index: int = 0) -> dict[str, Any] | None:
    """{"name", "compute_capability", "via"} of CUDA device ``index``, or None when there is none."""
    torch = _torch_cuda()
    if torch is not None and index < torch.cuda.device_count():
        major, minor = torch.cuda.get_device_capability(index)
        return {"name": torch.cuda.get_device_name(index), "compute_capability": f"{major}.{minor}", "via": "torch"}
    try:
        cudart = _cudart()
        err, count = cudart.cudaGetDeviceCount()
        if int(err) != 0 or count <= index:
            return None
        err, props = cudart.cudaGetDeviceProperties(index)
        if int(err) != 0:
            return None
        name = props.name.decode(errors="replace") if isinstance(props.name, bytes) else str(props.name)
        return {"name": name.strip("\x00 "), "compute_capability": f"{props.major}.{props.minor}",
                "via": "cuda-python"}
    except Exception:  # noqa: BLE001 - no cuda-python or no driver: no GPU
        return None


def device_index(device: str | None) -> int:
    """'cuda:1' / 'gpu:1' / '1' -> 1; None/'cuda'/'gpu' -> 0."""
    if not device:
        return 0
    tail = str(device).lower().split(":")[-1]
    if tail in ("cuda", "gpu"):
        return 0
    try:
        return int(tail)
    except ValueError:
        from edgekit.errors import UsageError

        raise UsageError(f"bad TensorRT device '{device}'", hint="use cuda, cuda:N or N") from None


# -- device buffers ------------------------------------------------------------------------------
class _TorchBuffers:
    """Inputs/outputs as torch CUDA tensors, ordered on torch's current stream."""

    via = "torch"

    def __init__(self, torch, index: int):
        self.torch = torch
        self.device = torch.device("cuda", index)
        torch.cuda.set_device(self.device)
        self.stream = torch.cuda.current_stream(self.device)

    @property
    def stream_handle(self) -> int:
        return self.stream.cuda_stream

    def upload(self, array: np.ndarray):
        t = self.torch.from_numpy(np.ascontiguousarray(array)).to(self.device, non_blocking=False)
        return t, t.data_ptr()

    def empty(self, shape: tuple[int, ...], dtype: np.dtype):
        t = self.torch.empty(shape, dtype=_torch_dtype(self.torch, dtype), device=self.device)
        return t, t.data_ptr()

    def download(self, handle, shape, dtype) -> np.ndarray:
        self.stream.synchronize()
        return handle.cpu().numpy()

    def close(self) -> None:
        self.stream.synchronize()


def _torch_dtype(torch, dtype: np.dtype):
    return {np.dtype(np.float32): torch.float32, np.dtype(np.float16): torch.float16,
            np.dtype(np.int32): torch.int32, np.dtype(np.int64): torch.int64, np.dtype(np.int8): torch.int8,
            np.dtype(np.uint8): torch.uint8, np.dtype(np.bool_): torch.bool}[np.dtype(dtype)]


class _CudaPythonBuffers:
    """Inputs/outputs as cudaMalloc'd memory on a private stream (cuda-python runtime API)."""

    via = "cuda-python"

    def __init__(self, index: int):
        self.rt = _cudart()
        self._check(self.rt.cudaSetDevice(index), "cudaSetDevice")
        self.stream = self._check(self.rt.cudaStreamCreate(), "cudaStreamCreate")
        self._allocs: list[int] = []

    def _check(self, result, what: str):
        err, *rest = result if isinstance(result, tuple) else (result,)
        if int(err) != 0:
            raise ArtifactError(f"CUDA call {what} failed: {err}")
        return rest[0] if len(rest) == 1 else (rest or None)

    @property
    def stream_handle(self) -> int:
        return int(self.stream)

    def _malloc(self, nbytes: int) -> int:
        ptr = int(self._check(self.rt.cudaMalloc(max(nbytes, 1)), "cudaMalloc"))
        self._allocs.append(ptr)
        return ptr

    def upload(self, array: np.ndarray):
        array = np.ascontiguousarray(array)
        ptr = self._malloc(array.nbytes)
        self._check(self.rt.cudaMemcpyAsync(ptr, array.ctypes.data, array.nbytes,
                                            self.rt.cudaMemcpyKind.cudaMemcpyHostToDevice, self.stream),
                    "cudaMemcpyAsync")
        return array, ptr  # keep the host array alive until the copy has run

    def empty(self, shape, dtype):
        nbytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
        ptr = self._malloc(nbytes)
        return ptr, ptr

    def download(self, handle, shape, dtype) -> np.ndarray:
        host = np.empty(shape, dtype=dtype)
        self._check(self.rt.cudaMemcpyAsync(host.ctypes.data, handle, host.nbytes,
                                            self.rt.cudaMemcpyKind.cudaMemcpyDeviceToHost, self.stream),
                    "cudaMemcpyAsync")
        self._check(self.rt.cudaStreamSynchronize(self.stream), "cudaStreamSynchronize")
        return host

    def release(self) -> None:
        for ptr in self._allocs:
            self.rt.cudaFree(ptr)
        self._allocs.clear()

    def close(self) -> None:
        self.rt.cudaStreamSynchronize(self.stream)
        self.release()
        self.rt.cudaStreamDestroy(self.stream)


# -- the runner ----------------------------------------------------------------------------------
class TensorRTRunner:
    """Runs one ``.engine`` file. ``expected`` is the build's manifest meta (version, GPU)."""

    def __init__(self, path: Path, inputs: tuple[InputSpec, ...] = (), outputs: tuple[str, ...] = (),
                 device: str | None = None, expected: dict[str, Any] | None = None, name: str = "tensorrt"):
        self.path = Path(path)
        self.inputs = tuple(inputs)
        self.outputs = tuple(outputs)
        self.index = device_index(device)
        self.expected = dict(expected or {})
        self.name = name
        self.notes: list[str] = []
        self._engine = self._context = self._buffers = None
        self._io: dict[str, tuple[bool, np.dtype]] = {}
        self._engine_outputs: tuple[str, ...] = ()

    def __enter__(self) -> "TensorRTRunner":
        from .exporter import import_tensorrt

        trt = import_tensorrt()
        gpu = cuda_device(self.index)
        if gpu is None:
            raise UnavailableError(f"no CUDA GPU (device {self.index}) to run {self.path.name} on",
                                   hint="TensorRT engines run on NVIDIA GPUs only")
        self._check_compatible(trt.__version__, gpu)
        if not self.path.is_file():
            raise ArtifactError(f"TensorRT engine not found: {self.path}")
        torch = _torch_cuda()
        self._buffers = _TorchBuffers(torch, self.index) if torch is not None else _CudaPythonBuffers(self.index)
        from .exporter import capturing_logger

        logger = capturing_logger(trt)
        self._runtime = trt.Runtime(logger)
        self._engine = self._runtime.deserialize_cuda_engine(self.path.read_bytes())
        if self._engine is None:
            raise ArtifactError(f"TensorRT could not deserialize {self.path.name}: {logger.last_error()}",
                                hint="rebuild the engine on this machine ('edgekit export ... --target tensorrt')")
        self._context = self._engine.create_execution_context()
        names = [self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)]
        ins = [n for n in names if self._engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outs = [n for n in names if n not in ins]
        for n in names:
            self._io[n] = (n in ins, np.dtype(trt.nptype(self._engine.get_tensor_dtype(n))))
        if not self.inputs:
            self.inputs = tuple(InputSpec(n, tuple(max(int(d), 1) for d in self._engine.get_tensor_shape(n)),
                                          dynamic_batch=int(self._engine.get_tensor_shape(n)[0]) < 0) for n in ins)
        self._engine_outputs = tuple(outs)
        if not self.outputs:
            self.outputs = tuple(outs)
        return self

    def _check_compatible(self, version: str, gpu: dict[str, Any]) -> None:
        built = self.expected.get("tensorrt_version")
        if built and built != version:
            raise ArtifactError(f"{self.path.name} was built with TensorRT {built}; this machine has {version}. "
                                "TensorRT engines only load in the TensorRT version that built them",
                                hint="rebuild it here: edgekit export MODEL --target tensorrt")
        cc = self.expected.get("compute_capability")
        if cc and cc != gpu["compute_capability"]:
            raise ArtifactError(f"{self.path.name} was built for compute capability {cc} "
                                f"({self.expected.get('gpu_name', 'another GPU')}); this GPU "
                                f"({gpu['name']}) is {gpu['compute_capability']}",
                                hint="rebuild it on this GPU: edgekit export MODEL --target tensorrt")
        if self.expected.get("gpu_name") and self.expected["gpu_name"] != gpu["name"]:
            self.notes.append(f"built on {self.expected['gpu_name']}, running on {gpu['name']} (same architecture)")

    def __exit__(self, *exc: object) -> None:
        if self._buffers is not None:
            self._buffers.close()
        self._context = self._engine = self._buffers = None

    def infer(self, feeds: Feed) -> dict[str, np.ndarray]:
        if self._context is None:
            raise RuntimeError("TensorRTRunner.infer called outside its 'with' block")
        ctx, bufs, keep = self._context, self._buffers, []
        for spec in self.inputs:
            if spec.name not in feeds:
                raise ArtifactError(f"feed has no input '{spec.name}' (has: {', '.join(feeds)})")
            _, dtype = self._io[spec.name]
            array = np.asarray(feeds[spec.name], dtype=dtype)
            if not ctx.set_input_shape(spec.name, tuple(array.shape)):
                raise ArtifactError(f"input '{spec.name}' shape {tuple(array.shape)} is outside the engine's "
                                    "optimization profile", hint="rebuild with --min-batch/--max-batch covering it")
            handle, ptr = bufs.upload(array)
            keep.append(handle)
            ctx.set_tensor_address(spec.name, ptr)
        results = []
        for name in self._engine_outputs:
            shape = tuple(int(d) for d in ctx.get_tensor_shape(name))
            _, dtype = self._io[name]
            handle, ptr = bufs.empty(shape, dtype)
            ctx.set_tensor_address(name, ptr)
            results.append((name, handle, shape, dtype))
        if not ctx.execute_async_v3(bufs.stream_handle):
            raise ArtifactError(f"TensorRT failed to run {self.path.name} (execute_async_v3 returned False)")
        out = {name: np.asarray(bufs.download(h, shape, dtype), dtype=np.float32)
               for name, h, shape, dtype in results}
        if isinstance(bufs, _CudaPythonBuffers):
            bufs.release()
        return {(self.outputs[i] if i < len(self.outputs) else n): out[n] for i, n in enumerate(self._engine_outputs)}
