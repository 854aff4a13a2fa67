"""Read a saved ``.mlpackage`` into plain records: the ML Program's ops, its constants
(read from ``weights/weight.bin`` by offset) and its inputs and outputs.

The package layout (``Manifest.json`` → ``Data/com.apple.CoreML/model.mlmodel`` plus
``Data/com.apple.CoreML/weights/weight.bin``) and the ``Model`` / ``MILSpec`` protobuf
messages are coremltools' (``coremltools.proto.Model_pb2`` / ``MIL_pb2``, generated from
``mlmodel/format/Model.proto`` and ``MIL.proto``). The spec is parsed with those classes;
every value is decoded here, so nothing of coremltools' MIL builder is used to execute.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.errors import ArtifactError

from .blob import BlobFile
from .dtypes import proto_dtype, proto_name
from .registry import MilError

MODEL_PATH_TOKEN = "@model_path/"


@dataclass(frozen=True)
class Var:
    """A named value of the program: its MIL type (``fp16``...) and static shape when known."""

    name: str
    dtype_name: str
    dtype: np.dtype | None
    shape: tuple[int | None, ...] | None


@dataclass
class Op:
    """One operation. ``inputs`` maps a parameter to its bindings: a variable name (str)
    or an inline value (decoded). ``value`` is a ``const`` op's decoded value."""

    type: str
    name: str
    inputs: dict[str, tuple[Any, ...]]
    outputs: tuple[Var, ...]
    value: Any = None
    has_blocks: bool = False


@dataclass
class Feature:
    """A model input or output as the Model description declares it."""

    name: str
    kind: str                      # "multiArray" | "image" | other
    shape: tuple[int, ...] = ()
    dtype_name: str = ""           # multi-arrays: FLOAT32 / FLOAT16 / ...
    color: str = ""                # images: RGB / BGR / GRAYSCALE


@dataclass
class Program:
    path: Path
    name: str
    spec_version: int
    opset: str
    inputs: tuple[Var, ...]
    outputs: tuple[str, ...]
    ops: list[Op]
    features_in: tuple[Feature, ...] = ()
    features_out: tuple[Feature, ...] = ()
    metadata: dict[str, str] = field(default_factory=dict)

    def op_counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for o in self.ops:
            out[o.type] = out.get(o.type, 0) + 1
        return dict(sorted(out.items(), key=lambda kv: -kv[1]))


def proto_classes():
    """coremltools' generated protobuf module for Model.proto (imported quietly)."""
    from .quiet import import_coremltools

    import_coremltools()
    from coremltools.proto import Model_pb2

    return Model_pb2


def model_file(package: Path) -> Path:
    """``Data/<root item path>`` from ``Manifest.json`` (the usual ``com.apple.CoreML/model.mlmodel``)."""
    package = Path(package)
    manifest = package / "Manifest.json"
    if not package.is_dir() or not manifest.is_file():
        raise ArtifactError(f"{package} is not an .mlpackage (no Manifest.json)",
                            hint="pass the folder written by 'edgekit export --target coreml'")
    try:
        m = json.loads(manifest.read_text())
        entry = m["itemInfoEntries"][m["rootModelIdentifier"]]
        path = package / "Data" / entry["path"]
    except (KeyError, TypeError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"{manifest} does not name the root model: {exc}") from None
    if not path.is_file():
        raise ArtifactError(f"{package.name}: model spec {path.relative_to(package)} is missing")
    return path


def read_spec(package: Path):
    """The ``Model`` protobuf message of a package."""
    pb = proto_classes()
    spec = pb.Model()
    path = model_file(package)
    try:
        spec.ParseFromString(path.read_bytes())
    except Exception as exc:  # google.protobuf.message.DecodeError
        raise ArtifactError(f"{path} is not a readable Core ML model spec: {exc}") from None
    return spec


def load_program(package: Path, function: str = "main") -> Program:
    """Parse a package's ML Program into a :class:`Program` (constants included)."""
    package = Path(package)
    spec = read_spec(package)
    if spec.WhichOneof("Type") != "mlProgram":
        raise MilError(f"{package.name} holds a '{spec.WhichOneof('Type')}' model, not an ML Program",
                       hint="export with convert_to='mlprogram' (edgekit does)")
    prog = spec.mlProgram
    if function not in prog.functions:
        raise MilError(f"{package.name}: no function '{function}' (has {', '.join(prog.functions)})")
    fn = prog.functions[function]
    block = fn.block_specializations[fn.opset]
    model_dir = model_file(package).parent
    decoder = _Decoder(model_dir, package.name)
    ops = [_op(o, decoder) for o in block.operations]
    return Program(path=package, name=package.name, spec_version=spec.specificationVersion, opset=fn.opset,
                   inputs=tuple(_var(i.name, i.type) for i in fn.inputs), outputs=tuple(block.outputs), ops=ops,
                   features_in=tuple(_feature(f) for f in spec.description.input),
                   features_out=tuple(_feature(f) for f in spec.description.output),
                   metadata=dict(spec.description.metadata.userDefined))


# -- decoding ------------------------------------------------------------------------

def _var(name: str, vtype) -> Var:
    kind = vtype.WhichOneof("type")
    if kind != "tensorType":
        return Var(name, kind or "?", None, None)
    tt = vtype.tensorType
    shape = tuple(d.constant.size if d.WhichOneof("dimension") == "constant" else None for d in tt.dimensions)
    return Var(name, proto_name(tt.dataType), proto_dtype(tt.dataType), shape)


def _enum_name(message, field: str) -> str:
    """The symbolic name of an enum field (``FLOAT32``, ``RGB`` ...) from the message's descriptor."""
    enum = message.DESCRIPTOR.fields_by_name[field].enum_type
    value = getattr(message, field)
    return enum.values_by_number[value].name if value in enum.values_by_number else str(value)


def _feature(f) -> Feature:
    t = f.type
    kind = t.WhichOneof("Type")
    if kind == "multiArrayType":
        ma = t.multiArrayType
        return Feature(f.name, "multiArray", tuple(int(s) for s in ma.shape), _enum_name(ma, "dataType"))
    if kind == "imageType":
        it = t.imageType
        return Feature(f.name, "image", (int(it.height), int(it.width)), "", _enum_name(it, "colorSpace"))
    return Feature(f.name, kind or "?")


class _Decoder:
    def __init__(self, model_dir: Path, package: str):
        self.model_dir = model_dir
        self.package = package
        self._blobs: dict[str, BlobFile] = {}

    def blob(self, file_name: str) -> BlobFile:
        if file_name not in self._blobs:
            rel = file_name[len(MODEL_PATH_TOKEN):] if file_name.startswith(MODEL_PATH_TOKEN) else file_name
            path = (self.model_dir / rel).resolve()
            if self.model_dir.resolve() not in path.parents:
                raise ArtifactError(f"{self.package}: weight file '{file_name}' is outside the package")
            if not path.is_file():
                raise ArtifactError(f"{self.package}: weight file {rel} is missing")
            self._blobs[file_name] = BlobFile(path)
        return self._blobs[file_name]

    def value(self, v) -> Any:
        """A MILSpec.Value → NumPy array (tensors), str (string scalars) or list of str."""
        var = _var("", v.type)
        kind = v.WhichOneof("value")
        if kind == "blobFileValue":
            raw = self.blob(v.blobFileValue.fileName).read(v.blobFileValue.offset)
            if var.dtype is not None and raw.dtype != var.dtype:
                raise ArtifactError(f"{self.package}: blob at offset {v.blobFileValue.offset} holds "
                                    f"{raw.dtype}, the program declares {var.dtype_name}")
            return _shaped(raw, var)
        if kind != "immediateValue":
            raise MilError(f"{self.package}: value of kind '{kind}' is not supported")
        imm = v.immediateValue
        if imm.WhichOneof("value") != "tensor":
            raise MilError(f"{self.package}: immediate {imm.WhichOneof('value')} values are not supported")
        tv = imm.tensor
        which = tv.WhichOneof("value")
        if which == "strings":
            vals = list(tv.strings.values)
            return vals[0] if var.shape == () and len(vals) == 1 else vals
        if var.dtype is None:
            raise MilError(f"{self.package}: constants of type {var.dtype_name} are not supported")
        if which == "bytes":
            raw = tv.bytes.values  # a single bytes field holding the packed values
            data = raw if isinstance(raw, (bytes, bytearray)) else b"".join(raw)
            arr = np.frombuffer(data, dtype=var.dtype.newbyteorder("<")).astype(var.dtype)
        elif which is None:
            arr = np.zeros(0, var.dtype)
        else:
            arr = np.asarray(list(getattr(tv, which).values)).astype(var.dtype)
        return _shaped(arr, var)


def _shaped(arr: np.ndarray, var: Var) -> np.ndarray:
    if var.shape is None or any(d is None for d in var.shape):
        return arr
    n = int(np.prod(var.shape)) if var.shape else 1
    if arr.size != n:
        raise MilError(f"constant has {arr.size} values, its type {var.dtype_name}{list(var.shape)} needs {n}")
    return arr.reshape(var.shape)


def _op(o, dec: _Decoder) -> Op:
    outputs = tuple(_var(v.name, v.type) for v in o.outputs)
    inputs: dict[str, tuple[Any, ...]] = {}
    for key, arg in o.inputs.items():
        inputs[key] = tuple(b.name if b.WhichOneof("binding") == "name" else dec.value(b.value) for b in arg.arguments)
    name = outputs[0].name if outputs else o.type
    if "name" in o.attributes:
        n = dec.value(o.attributes["name"])
        name = n if isinstance(n, str) else name
    value = None
    for key, attr in o.attributes.items():  # iOS16 constexpr ops carry their parameters as attributes
        if key == "name" or key in inputs:
            continue
        decoded = dec.value(attr)
        if o.type == "const" and key == "val":
            value = decoded
        else:
            inputs[key] = (decoded,)
    return Op(type=o.type, name=name, inputs=inputs, outputs=outputs, value=value, has_blocks=len(o.blocks) > 0)
