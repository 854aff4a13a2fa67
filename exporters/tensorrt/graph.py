"""A read-only view of an ONNX graph for the TensorRT lint: producers, consumers, constants, types.

Only the ``onnx`` package is needed (imported lazily); nothing here touches TensorRT or a GPU.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from calibration.graph import GraphIndex
from edgekit.errors import ArtifactError, first_line, require

from .ops import ONNX_TYPES


class GraphView:
    """Maps of the main graph of an ONNX model, after best-effort shape inference."""

    def __init__(self, model_or_path: Any):
        onnx = require("onnx", "onnx", "the TensorRT lint")
        if isinstance(model_or_path, (str, Path)):
            try:
                model = onnx.load(str(model_or_path))
            except Exception as exc:
                msg = first_line(exc, None)
                raise ArtifactError(f"{Path(model_or_path).name} is not a readable ONNX model: {msg[:200]}") from None
        else:
            model = model_or_path
        try:  # types and shapes of intermediate tensors; the lint still runs on what is known without it
            model = onnx.shape_inference.infer_shapes(model, strict_mode=False, data_prop=True)
        except Exception:  # noqa: BLE001 - inference is an aid, not a requirement
            pass
        self.onnx = onnx
        self.model = model
        self.graph = model.graph
        self.nodes = list(self.graph.node)
        self.opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
        index = GraphIndex(model)  # the same index the ONNX Runtime form's passes share
        self.inits = index.inits
        self.inputs = [i for i in self.graph.input if i.name not in self.inits]
        self.input_names = {i.name for i in self.inputs}
        self.output_names = {o.name for o in self.graph.output}
        self.producer: dict[str, Any] = index.producer
        self.consumers: dict[str, list[tuple[Any, int]]] = index.uses
        self.types: dict[str, int] = {}
        self.shapes: dict[str, list[int | str | None]] = {}
        for vi in [*self.graph.input, *self.graph.output, *self.graph.value_info]:
            tt = vi.type.tensor_type
            if tt.elem_type:
                self.types[vi.name] = tt.elem_type
            if tt.HasField("shape"):
                self.shapes[vi.name] = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
                                        for d in tt.shape.dim]
        for name, init in self.inits.items():
            self.types[name] = init.data_type
            self.shapes[name] = list(init.dims)
        self._names = {id(n): (n.name or f"{n.op_type}#{i}") for i, n in enumerate(self.nodes)}
        self._const_cache: dict[str, np.ndarray | None] = {}

    # -- lookups -----------------------------------------------------------------------------
    def name(self, node: Any) -> str:
        return self._names[id(node)]

    def type_name(self, tensor: str) -> str | None:
        """The tensor's element type in the support table's spelling, or None if unknown."""
        t = self.types.get(tensor)
        if t is None:
            value = self.const(tensor)
            if value is not None:
                t = self.onnx.helper.np_dtype_to_tensor_dtype(value.dtype)
        return ONNX_TYPES.get(t, f"type {t}") if t else None

    def shape(self, tensor: str) -> list[int | str | None] | None:
        if tensor in self.shapes:
            return self.shapes[tensor]
        value = self.const(tensor)
        return list(value.shape) if value is not None else None

    def attr(self, node: Any, name: str, default: Any = None) -> Any:
        for a in node.attribute:
            if a.name == name:
                value = self.onnx.helper.get_attribute_value(a)
                return value.decode() if isinstance(value, bytes) else value
        return default

    def has_attr(self, node: Any, name: str) -> bool:
        return any(a.name == name for a in node.attribute)

    def used(self, tensor: str) -> bool:
        return bool(tensor) and (tensor in self.consumers or tensor in self.output_names)

    def const(self, tensor: str) -> np.ndarray | None:
        """The tensor's value when it is a build-time constant (initializer, Constant, Identity of one)."""
        if not tensor:
            return None
        if tensor in self._const_cache:
            return self._const_cache[tensor]
        self._const_cache[tensor] = None  # guards against cycles
        value = None
        nh = self.onnx.numpy_helper
        if tensor in self.inits:
            value = nh.to_array(self.inits[tensor])
        elif tensor in self.producer:
            node = self.producer[tensor]
            if node.op_type == "Constant":
                for a in node.attribute:
                    if a.name == "value":
                        value = nh.to_array(a.t)
                    elif a.name in ("value_float", "value_int"):
                        value = np.asarray(self.onnx.helper.get_attribute_value(a))
                    elif a.name in ("value_floats", "value_ints"):
                        value = np.asarray(list(self.onnx.helper.get_attribute_value(a)))
            elif node.op_type == "Identity":
                value = self.const(node.input[0])
        self._const_cache[tensor] = value
        return value

    def is_const(self, tensor: str) -> bool:
        return self.const(tensor) is not None
