"""Latency measurement (``measure``), the device fingerprint and report rows.

Light to import: runtimes are imported only when a runner is opened.
"""
from .device import fingerprint
from .timing import LatencyStats, measure, synthetic_feed

__all__ = ["LatencyStats", "fingerprint", "measure", "synthetic_feed"]
