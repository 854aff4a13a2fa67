"""Numbers that say whether two runners compute the same thing.

``compare_arrays`` scores one output against its reference; a :class:`Comparison`
collects those scores for one stage over many feeds and is truthy when it passes its
:class:`Tolerance`. Metrics: max abs, max rel, cosine, SQNR (dB) and, for
classifier outputs, top-1 / top-5 agreement.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Tolerance:
    """Pass/fail thresholds. ``None`` means the metric is reported, not gated."""

    max_abs: float | None = None  # for outputs of peak magnitude <= 10; scales with the peak above that
    cosine: float | None = None
    sqnr_db: float | None = None
    top1: float | None = None
    # FP32 only: the reference's own rounding error (torch FP32 vs FP64 on the same feeds, see
    # torch_runner.fp32_rounding_error) times ROUNDING_FACTOR; max_abs is never held below it
    max_abs_floor: float | None = None
    # Reduced precision, trained weights (edgekit/verdict.py): with a measured yardstick (FP32 vs
    # itself under ±½ pixel step of input noise) top-1 must reach min(top1, yardstick − top1_margin),
    # and confident_top1 on the rows whose reference top-1/top-2 margin is >= CONFIDENT_MARGIN.
    top1_margin: float | None = None
    confident_top1: float | None = None
    # False: quantization accuracy is reported, not judged (untrained weights); only non-finite
    # outputs fail. ``assessed_note`` says why.
    assessed: bool = True
    assessed_note: str = ""

    def merged(self, **overrides: Any) -> "Tolerance":
        return replace(self, **{k: v for k, v in overrides.items() if v is not None})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# Defaults by precision. FP32 must match elementwise; FP16 and INT8 are judged on
# what users care about (cosine, SQNR, top-1 agreement), not on an elementwise atol.
# An FP32 runtime is held to max_abs <= this many times torch FP32's own error against FP64
# (deep untrained networks amplify rounding: efficientnet_v2_s at 96 px, torch FP32 vs FP64
# max-abs 0.036 at peak 120, so no other FP32 kernel library can match torch to 1e-3).
ROUNDING_FACTOR = 4.0

DEFAULT_TOLERANCES: dict[str, Tolerance] = {
    "fp32": Tolerance(max_abs=1e-4, cosine=0.99999, sqnr_db=60.0),
    # reduced precision: the policy's numbers (edgekit/verdict.py applies them; docs/calibration.md)
    "fp16": Tolerance(cosine=0.999, sqnr_db=25.0, top1=0.98, top1_margin=0.01, confident_top1=0.99),
    # INT8, trained: 25 dB SQNR against FP32 (noise at 5.6 % of the signal's amplitude), issue 19's
    # bar; the calibration's float fallback works towards it (docs/calibration.md)
    "int8": Tolerance(cosine=0.99, sqnr_db=25.0, top1=0.98, top1_margin=0.01, confident_top1=0.99),
}


def tolerance_for(precision: str, overrides: dict[str, Any] | None = None) -> Tolerance:
    return DEFAULT_TOLERANCES[precision].merged(**(overrides or {}))


def _flat(a: np.ndarray) -> np.ndarray:
    return np.asarray(a, dtype=np.float64).reshape(-1)


def sqnr_db(ref: np.ndarray, test: np.ndarray) -> float:
    """Signal-to-quantization-noise ratio, 20·log10(‖ref‖ / ‖ref − test‖); inf if identical."""
    r, t = _flat(ref), _flat(test)
    noise = np.linalg.norm(r - t)
    if noise == 0:
        return math.inf
    signal = np.linalg.norm(r)
    return 20.0 * math.log10(max(signal, 1e-30) / noise)


def cosine(ref: np.ndarray, test: np.ndarray) -> float:
    r, t = _flat(ref), _flat(test)
    nr, nt = np.linalg.norm(r), np.linalg.norm(t)
    if nr == 0 and nt == 0:
        return 1.0
    if nr == 0 or nt == 0:
        return 0.0
    return float(np.dot(r, t) / (nr * nt))


NEAR_TIE_MARGIN = 0.05
CONFIDENT_MARGIN = 0.2  # reference softmax top-1 minus top-2 at or above this: a confident sample


def top2_margin(ref: np.ndarray) -> np.ndarray:
    """Per row: top-1 minus top-2 probability of the reference (softmax of logits; rows that
    already are probabilities are used as they are). A top-1 flip on a row with a small
    margin says more about the sample than about the artifact."""
    r = np.asarray(ref, dtype=np.float64).reshape(ref.shape[0], -1)
    is_prob = (r >= 0).all() and np.allclose(r.sum(axis=1), 1.0, atol=1e-3)
    if not is_prob:
        e = np.exp(r - r.max(axis=1, keepdims=True))
        r = e / e.sum(axis=1, keepdims=True)
    top = np.sort(r, axis=1)[:, -2:]
    return top[:, 1] - top[:, 0]


def topk_agreement(ref: np.ndarray, test: np.ndarray, k: int = 1) -> tuple[int, int]:
    """(agreeing rows, rows): does ``test``'s top-1 class fall in ``ref``'s top-1 (k=1) / is
    ``ref``'s top-1 in ``test``'s top-k (k>1)? Rows are the leading dimension."""
    r = np.asarray(ref).reshape(ref.shape[0], -1)
    t = np.asarray(test).reshape(test.shape[0], -1)
    ref_top1 = r.argmax(axis=1)
    if k == 1:
        return int((t.argmax(axis=1) == ref_top1).sum()), r.shape[0]
    k = min(k, t.shape[1])
    topk = np.argpartition(-t, k - 1, axis=1)[:, :k]
    return int((topk == ref_top1[:, None]).any(axis=1).sum()), r.shape[0]


@dataclass
class OutputScore:
    """Running metrics for one output of one stage over all feeds."""

    name: str
    max_abs: float = 0.0
    max_rel: float = 0.0
    ref_peak: float = 0.0
    _dot: float = 0.0
    _rr: float = 0.0
    _tt: float = 0.0
    _noise: float = 0.0
    top1_hits: int = 0
    top5_hits: int = 0
    rows: int = 0
    samples: int = 0
    nonfinite: int = 0
    classifier: bool = False
    near_ties: int = 0         # rows whose reference top-1/top-2 probability margin < NEAR_TIE_MARGIN
    near_tie_misses: int = 0   # top-1 disagreements among those rows
    confident: int = 0         # rows whose reference top-1/top-2 margin >= CONFIDENT_MARGIN
    confident_hits: int = 0    # top-1 agreements among those rows

    def add(self, ref: np.ndarray, test: np.ndarray) -> None:
        ref = np.asarray(ref)
        test = np.asarray(test)
        if ref.shape != test.shape:
            raise ValueError(f"output '{self.name}': shape {test.shape} differs from reference {ref.shape}")
        r, t = _flat(ref), _flat(test)
        self.nonfinite += int((~np.isfinite(t)).sum())
        t = np.nan_to_num(t, nan=0.0, posinf=0.0, neginf=0.0)
        diff = np.abs(r - t)
        self.max_abs = max(self.max_abs, float(diff.max(initial=0.0)))
        self.ref_peak = max(self.ref_peak, float(np.abs(r).max(initial=0.0)))
        denom = np.maximum(np.abs(r), 1e-6 * max(float(np.abs(r).max(initial=0.0)), 1e-12))
        self.max_rel = max(self.max_rel, float((diff / denom).max(initial=0.0)))
        self._dot += float(r @ t)
        self._rr += float(r @ r)
        self._tt += float(t @ t)
        self._noise += float(diff @ diff)
        self.samples += 1
        self.classifier = ref.ndim == 2 and ref.shape[1] > 1
        if self.classifier:
            h, n = topk_agreement(ref, test, 1)
            self.top1_hits += h
            self.rows += n
            self.top5_hits += topk_agreement(ref, test, 5)[0]
            margin = top2_margin(ref)
            agree = ref.reshape(ref.shape[0], -1).argmax(1) == test.reshape(test.shape[0], -1).argmax(1)
            ties = margin < NEAR_TIE_MARGIN
            self.near_ties += int(ties.sum())
            self.near_tie_misses += int((ties & ~agree).sum())
            sure = margin >= CONFIDENT_MARGIN
            self.confident += int(sure.sum())
            self.confident_hits += int((sure & agree).sum())

    @property
    def cosine(self) -> float:
        if self._rr == 0 and self._tt == 0:
            return 1.0
        if self._rr == 0 or self._tt == 0:
            return 0.0
        return self._dot / math.sqrt(self._rr * self._tt)

    @property
    def sqnr_db(self) -> float:
        if self._noise == 0:
            return math.inf
        return 10.0 * math.log10(max(self._rr, 1e-60) / self._noise)

    @property
    def top1(self) -> float | None:
        return self.top1_hits / self.rows if self.rows else None

    @property
    def top5(self) -> float | None:
        return self.top5_hits / self.rows if self.rows else None

    @property
    def confident_top1(self) -> float | None:
        return self.confident_hits / self.confident if self.confident else None

    @staticmethod
    def top1_floor(tol: Tolerance, yardstick: float | None) -> float | None:
        """The top-1 agreement ``tol`` asks for, given the reference's measured stability."""
        if tol.top1 is None:
            return None
        if yardstick is None or tol.top1_margin is None:
            return tol.top1
        return min(tol.top1, yardstick - tol.top1_margin)

    def max_abs_limit(self, tol: Tolerance) -> float | None:
        """float32 rounding is relative: the absolute threshold holds for outputs whose peak
        magnitude is at most 10 (typical logits) and grows in proportion above that."""
        if tol.max_abs is None:
            return None
        return max(tol.max_abs * max(1.0, self.ref_peak / 10.0), tol.max_abs_floor or 0.0)

    def failures(self, tol: Tolerance, yardstick: float | None = None) -> list[str]:
        out = []
        if self.nonfinite:
            out.append(f"{self.nonfinite} non-finite values")
        if not tol.assessed:
            return out
        limit = self.max_abs_limit(tol)
        if limit is not None and self.max_abs > limit:
            out.append(f"max_abs {self.max_abs:.3g} > {limit:.3g}")
        if tol.cosine is not None and self.cosine < tol.cosine:
            out.append(f"cosine {self.cosine:.6f} < {tol.cosine}")
        if tol.sqnr_db is not None and self.sqnr_db < tol.sqnr_db:
            out.append(f"sqnr {self.sqnr_db:.1f} dB < {tol.sqnr_db} dB")
        floor = self.top1_floor(tol, yardstick)
        if floor is not None and self.top1 is not None and self.top1 < floor - 1e-9:
            misses = self.rows - self.top1_hits
            context = (f" ({self.near_tie_misses} of {misses} disagreements on near-ties: {self.near_ties} of "
                       f"{self.rows} samples have a reference top-1/top-2 margin < {NEAR_TIE_MARGIN})"
                       if self.near_ties else "")
            bar = (f"{floor:.1%} (yardstick {yardstick:.1%} − {tol.top1_margin:.0%})" if floor != tol.top1
                   else f"{tol.top1:.0%}")
            out.append(f"top1 {self.top1:.1%} < {bar}{context}")
        if tol.confident_top1 is not None and tol.top1 is not None and self.confident_top1 is not None \
                and self.confident_top1 < tol.confident_top1 - 1e-9:
            out.append(f"top1 on confident samples {self.confident_top1:.1%} < {tol.confident_top1:.0%} "
                       f"({self.confident_hits} of {self.confident} with a reference top-1/top-2 margin "
                       f">= {CONFIDENT_MARGIN})")
        return out

    def to_dict(self) -> dict[str, Any]:
        f = lambda x: None if x is None else (x if math.isfinite(x) else ("inf" if x > 0 else "-inf"))  # noqa: E731
        return {"output": self.name, "max_abs": self.max_abs, "max_rel": self.max_rel, "ref_peak": self.ref_peak,
                "cosine": self.cosine, "sqnr_db": f(self.sqnr_db), "top1": self.top1, "top5": self.top5,
                "rows": self.rows, "samples": self.samples, "nonfinite": self.nonfinite,
                "near_ties": self.near_ties, "near_tie_misses": self.near_tie_misses,
                "confident": self.confident, "confident_top1": self.confident_top1}


@dataclass
class Comparison:
    """One stage against the reference over every feed. Truthy when every output passes.

    ``yardstick_top1``: the reference's own top-1 stability (edgekit/stability.py), which sets the
    top-1 floor of a reduced-precision stage with trained weights. ``fidelity``: the same stage
    against the shared Q/DQ (or FP16) graph executed by ONNX Runtime (edgekit/verdict.py), gated
    for any weights; a failing fidelity fails the stage."""

    stage: str
    runner: str
    precision: str
    tolerance: Tolerance
    outputs: dict[str, OutputScore] = field(default_factory=dict)
    inputs_source: str = ""
    note: str = ""
    yardstick_top1: float | None = None
    fidelity: "Comparison | None" = None
    reference: str = "torch fp32"
    fidelity_role: str = ""  # e.g. 'reference' for the shared graph itself

    def add(self, ref: dict[str, np.ndarray], test: dict[str, np.ndarray]) -> None:
        ref_names, test_names = list(ref), list(test)
        if len(ref_names) != len(test_names):
            raise ValueError(f"stage {self.stage}: {len(test_names)} outputs, reference has {len(ref_names)}")
        # outputs are matched by position: exporters may rename them
        for rname, tname in zip(ref_names, test_names):
            self.outputs.setdefault(rname, OutputScore(rname)).add(ref[rname], test[tname])

    @property
    def quantization_failures(self) -> list[str]:
        """Failures against the reference (for reduced precision: the quantization error)."""
        return [f"{name}: {msg}" for name, s in self.outputs.items()
                for msg in s.failures(self.tolerance, self.yardstick_top1)]

    @property
    def failures(self) -> list[str]:
        out = self.quantization_failures
        if self.fidelity is not None:
            out += [f"fidelity vs {self.fidelity.reference}: {m}" for m in self.fidelity.quantization_failures]
        return out

    @property
    def assessed(self) -> bool:
        return self.tolerance.assessed

    @property
    def passed(self) -> bool:
        return bool(self.outputs) and not self.failures

    def __bool__(self) -> bool:
        return self.passed

    def primary(self) -> OutputScore:
        return next(iter(self.outputs.values()))

    def to_dict(self) -> dict[str, Any]:
        d = {"stage": self.stage, "runner": self.runner, "precision": self.precision,
             "passed": self.passed, "failures": self.failures, "tolerance": self.tolerance.to_dict(),
             "inputs": self.inputs_source, "note": self.note,
             "outputs": [s.to_dict() for s in self.outputs.values()],
             "reference": self.reference, "assessed": self.tolerance.assessed,
             "quantization": ("not assessed: " + self.tolerance.assessed_note) if not self.tolerance.assessed
             else ("PASS" if self.outputs and not self.quantization_failures else "FAIL")
             + (f" ({self.tolerance.assessed_note.replace(': ', ' not assessed: ', 1)})"
                if self.tolerance.assessed_note else ""),
             "yardstick_top1": self.yardstick_top1}
        if self.fidelity_role:
            d["fidelity_role"] = self.fidelity_role
        if self.fidelity is not None:
            f = self.fidelity
            d["fidelity"] = {"reference": f.reference, "runner": f.runner, "passed": f.passed,
                             "failures": f.quantization_failures, "tolerance": f.tolerance.to_dict(),
                             "note": f.note, "outputs": [s.to_dict() for s in f.outputs.values()]}
        return d
