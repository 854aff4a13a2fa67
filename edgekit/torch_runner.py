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


def probe(model: nn.Module, inputs: tuple[InputSpec, ...], name: str, user: bool = False,
          default_shape: tuple[int, ...] | None = None) -> None:
    """One forward pass on zeros at the requested input shape (batch 1), before any export
    work: a model that cannot run on that input is a usage error that says so, and what a
    user's code raises or exits with is blamed on it, not reported as an edgekit bug."""
    from .errors import UsageError

    def run(shapes) -> BaseException | None:
        args = [torch.zeros((1, *s[1:]), dtype=getattr(torch, i.dtype, torch.float32))
                for i, s in zip(inputs, shapes)]
        try:
            with torch.inference_mode():
                model.eval()(*args)
        except KeyboardInterrupt:
            raise
        except (Exception, SystemExit) as exc:  # noqa: BLE001 - the model's own failure, reported below
            return exc
        return None

    exc = run([i.shape for i in inputs])
    if exc is None:
        return
    if user:
        from .models.user import blame

        raise blame(exc) from exc
    if isinstance(exc, SystemExit):  # pragma: no cover - zoo models do not exit
        raise exc
    shape = inputs[0].shape
    text = str(exc).strip()
    first = text.splitlines()[0][:240] if text else type(exc).__name__
    hint = None
    smallest = _smallest_side(run, inputs, default_shape) if default_shape else None
    if smallest:
        hint = (f"the smallest square input {name} runs on is {smallest}x{smallest}: --input-shape "
                f"{'x'.join(str(d) for d in (*shape[:2], smallest, smallest))} (its default is "
                f"{'x'.join(map(str, default_shape))})")
    elif default_shape:
        hint = f"its default input is {'x'.join(map(str, default_shape))}"
    raise UsageError(f"{name} cannot run on input {'x'.join(map(str, shape))}: {first}", hint=hint) from exc


def _smallest_side(run, inputs, default_shape, probes: int = 8) -> int | None:
    """The smallest square side (between the failing one and the default) the model runs on, by
    bisection with at most ``probes`` forward passes; None when the failure is not about size."""
    shape = inputs[0].shape
    if len(shape) != 4 or len(default_shape) != 4:
        return None
    lo, hi = max(shape[2:]), min(default_shape[2:])  # lo fails (as far as we know), hi should run
    if lo >= hi or run([(1, shape[1], hi, hi)]) is not None:
        return None
    for _ in range(probes):
        if hi - lo <= 1:
            break
        mid = (lo + hi) // 2
        if run([(1, shape[1], mid, mid)]) is None:
            hi = mid
        else:
            lo = mid
    return hi
