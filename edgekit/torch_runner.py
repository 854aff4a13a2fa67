"""The PyTorch reference as a Runner: parity compares every stage against it."""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from .contracts import Feed
from .specs import InputSpec


class TorchRunner:
    """Runs an ``nn.Module`` in eval mode on the CPU, FP32, no autograd."""

    def __init__(self, model: nn.Module, inputs: tuple[InputSpec, ...], outputs: tuple[str, ...] = ("output",),
                 name: str = "torch", threads: int | None = None):
        self.model = model.eval()
        self.inputs = tuple(inputs)
        self.outputs = tuple(outputs)
        self.name = name
        self.threads = threads
        self._saved_threads: int | None = None

    def __enter__(self) -> "TorchRunner":
        if self.threads:
            self._saved_threads = torch.get_num_threads()
            torch.set_num_threads(self.threads)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._saved_threads:
            torch.set_num_threads(self._saved_threads)

    @torch.inference_mode()
    def infer(self, feeds: Feed) -> dict[str, np.ndarray]:
        args = [torch.from_numpy(np.ascontiguousarray(feeds[i.name])) for i in self.inputs]
        out = self.model(*args)
        if isinstance(out, torch.Tensor):
            out = (out,)
        elif isinstance(out, dict):
            out = tuple(out.values())
        return {name: t.detach().float().numpy() for name, t in zip(self.outputs, out)}


def fp32_rounding_error(model: nn.Module, inputs: tuple[InputSpec, ...], feeds, limit: int = 4) -> float:
    """Max |torch FP32 − torch FP64| over the first ``limit`` feeds: the floor under which no
    FP32 runtime can be expected to match the FP32 reference."""
    import copy

    m64 = copy.deepcopy(model).double().eval()
    worst = 0.0
    with torch.inference_mode():
        for i, feed in enumerate(feeds):
            if i >= limit:
                break
            args = [torch.from_numpy(np.ascontiguousarray(feed[s.name])) for s in inputs]
            a, b = model.eval()(*args), m64(*[x.double() for x in args])
            a, b = (a if isinstance(a, (tuple, list)) else (a,)), (b if isinstance(b, (tuple, list)) else (b,))
            worst = max([worst] + [float((x.double() - y).abs().max()) for x, y in zip(a, b)
                                   if isinstance(x, torch.Tensor)])
    return worst
