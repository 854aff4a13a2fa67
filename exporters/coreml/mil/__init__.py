"""A reference interpreter for Core ML ML Programs (``.mlpackage``), in NumPy.

Core ML predicts only on macOS. This package reads a saved package — the ``Model``
spec and the weight blobs, by offset — and executes its MIL operations with NumPy, so
program-level parity (op translation, layouts, constants, quantization parameters) can
be checked on Linux. It does not run Apple's kernels; see docs/coreml.md for the ops
and the limits.

    from exporters.coreml.mil import Interpreter
    outputs = Interpreter("model.mlpackage").run({"input": x})
"""
from .executor import Interpreter, supported_ops
from .program import Program, load_program
from .registry import MilError
from .runner import MilRunner

__all__ = ["Interpreter", "MilError", "MilRunner", "Program", "load_program", "supported_ops"]
