"""Runs an ExecuTorch ``.pte`` program on ExecuTorch's own Python runtime.

The runtime is ``executorch.runtime`` (``Runtime.get()`` → ``load_program`` →
``load_method("forward")`` → ``execute``), documented at
https://docs.pytorch.org/executorch/1.5/runtime-python-api-reference.html. It loads the
file through the C++ runtime with the XNNPACK backend registered, so what runs here is
the program a phone would run, on XNNPACK's x86 kernels.

Threads: XNNPACK work runs on ExecuTorch's process-wide thread pool. The pybindings
expose it as ``_unsafe_reset_threadpool(n)`` / ``_threadpool_get_thread_count()``
(experimental, declared in ``executorch/extension/pybindings/pybindings.pyi``; the C++
side is ``threadpool::get_threadpool()->_unsafe_reset_threadpool`` as the portable
executor_runner uses it). The runner resizes the pool on enter and restores it on exit;
it must not be resized while another thread is executing a program.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edgekit.contracts import Feed
from edgekit.errors import ArtifactError, first_line, require
from edgekit.specs import InputSpec

METHOD = "forward"


def _threadpool():
    """The pybindings module that owns the thread pool, or None if this build lacks the hooks."""
    lib = require("executorch.extension.pybindings.portable_lib", "mobile", "the ExecuTorch runtime")
    if hasattr(lib, "_unsafe_reset_threadpool") and hasattr(lib, "_threadpool_get_thread_count"):
        return lib
    return None


class ExecuTorchRunner:
    """Executes one ``.pte`` with ExecuTorch's runtime (XNNPACK delegate). Float32 in, float32 out.

    The program has static shapes. A feed whose batch differs from the program's batch of
    1 is run row by row and the rows are stacked.
    """

    name = "executorch-xnnpack"

    def __init__(self, path: Path, inputs: tuple[InputSpec, ...] = (), outputs: tuple[str, ...] = (),
                 threads: int | None = None):
        self.path = Path(path)
        self.inputs: tuple[InputSpec, ...] = tuple(inputs)
        self.outputs: tuple[str, ...] = tuple(outputs)
        self.threads = threads
        self._method: Any = None
        self._program: Any = None
        self._saved_threads: int | None = None
        self._batch = 1

    def __enter__(self) -> "ExecuTorchRunner":
        runtime_mod = require("executorch.runtime", "mobile", "the ExecuTorch runtime")
        if not self.path.is_file():
            raise ArtifactError(f"ExecuTorch program not found: {self.path}")
        if self.threads:
            pool = _threadpool()
            if pool is not None:
                self._saved_threads = int(pool._threadpool_get_thread_count())
                pool._unsafe_reset_threadpool(int(self.threads))
        try:
            self._program = runtime_mod.Runtime.get().load_program(self.path)
            self._method = self._program.load_method(METHOD)
        except Exception as exc:
            self._restore_threads()
            msg = first_line(exc, None)
            raise ArtifactError(f"ExecuTorch cannot load {self.path.name}: {msg[:300]}",
                                hint="was it written by this executorch version?") from None
        if self._method is None:
            self._restore_threads()
            raise ArtifactError(f"{self.path.name} has no '{METHOD}' method")
        meta = self._method.metadata
        shapes = [tuple(meta.input_tensor_meta(i).sizes()) for i in range(meta.num_inputs())]
        if not self.inputs:
            self.inputs = tuple(InputSpec(f"input{i}" if len(shapes) > 1 else "input", s)
                                for i, s in enumerate(shapes))
        if not self.outputs:
            n = meta.num_outputs()
            self.outputs = tuple(f"output{i}" for i in range(n)) if n > 1 else ("output",)
        self._batch = shapes[0][0] if shapes and shapes[0] else 1
        return self

    def _restore_threads(self) -> None:
        if self._saved_threads:
            pool = _threadpool()
            if pool is not None:
                pool._unsafe_reset_threadpool(self._saved_threads)
            self._saved_threads = None

    def __exit__(self, *exc: object) -> None:
        self._method = None
        self._program = None
        self._restore_threads()

    def _run(self, arrays: list[np.ndarray]) -> list[np.ndarray]:
        import torch

        outs = self._method.execute([torch.from_numpy(a) for a in arrays])
        # outputs may alias the program's planned memory: copy before the next execute
        return [np.array(o.detach().numpy(), dtype=np.float32, copy=True) for o in outs]

    def infer(self, feeds: Feed) -> dict[str, np.ndarray]:
        if self._method is None:
            raise RuntimeError("ExecuTorchRunner.infer called outside its 'with' block")
        arrays = [np.ascontiguousarray(feeds[i.name], dtype=np.float32) for i in self.inputs]
        n = arrays[0].shape[0] if arrays and arrays[0].ndim else 1
        if self._batch == 1 and n > 1:
            rows = [self._run([a[r:r + 1] for a in arrays]) for r in range(n)]
            outs = [np.concatenate([row[k] for row in rows]) for k in range(len(rows[0]))]
        else:
            outs = self._run(arrays)
        return dict(zip(self.outputs, outs))
