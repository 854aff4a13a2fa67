"""A compatibility shim for coremltools 9's TorchScript frontend on NumPy >= 2.4.

coremltools converts ``aten::Int`` / ``aten::Float`` / ``aten::Bool`` of a constant by
calling ``int(value)`` on the constant, which is often a one-element array (shape
arithmetic such as ``c // groups`` in a channel shuffle). NumPy 2.4 turned that
long-deprecated conversion into a ``TypeError``, so every traced model with shape
arithmetic fails to convert (ShuffleNet V1/V2 here).

The shim re-registers those three converters through coremltools' documented extension
point for torch ops, ``register_torch_op(override=True)`` ("Composite Operators" guide,
https://apple.github.io/coremltools/docs-guides/source/composite-operators.html): a
constant becomes a scalar constant (its single element); anything else is squeezed and
cast, which is what the MIL ``cast`` op does. It is installed only when this NumPy
raises, and only once, on the first Core ML conversion.
"""
from __future__ import annotations

import numpy as np

_INSTALLED = False


def numpy_needs_shim() -> bool:
    try:
        int(np.ones(1))
    except TypeError:
        return True
    return False


def install() -> bool:
    """Register the scalar-cast converters; True when the shim is (now) active."""
    global _INSTALLED
    if _INSTALLED or not numpy_needs_shim():
        return _INSTALLED
    from coremltools.converters.mil import Builder as mb
    from coremltools.converters.mil.frontend.torch.torch_op_registry import register_torch_op

    def scalar_cast(py_type, mil_dtype):
        def convert(context, node):
            x = context[node.inputs[0]]
            if x.val is not None:
                value = np.asarray(x.val)
                if value.size != 1:
                    raise ValueError(f"{node.kind}: expected a single value, got shape {value.shape}")
                res = mb.const(val=py_type(value.reshape(-1)[0]), name=node.name)
            else:
                res = mb.cast(x=mb.squeeze(x=x) if x.rank > 0 else x, dtype=mil_dtype, name=node.name)
            context.add(res, node.name)
        return convert

    for torch_name, py_type, mil_dtype in (("int", int, "int32"), ("float", float, "fp32"), ("bool", bool, "bool")):
        fn = scalar_cast(py_type, mil_dtype)
        fn.__name__ = torch_name
        register_torch_op(fn, override=True)
    _INSTALLED = True
    return True
