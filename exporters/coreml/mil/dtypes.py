"""MIL data types as NumPy dtypes.

Three spellings meet here: the ``DataType`` enum of ``MIL.proto`` (tensor types in the
program), the ``BlobDataType`` codes of the weight file (MILBlob ``BlobDataType.hpp``:
1 fp16, 2 fp32, 3 uint8, 4 int8, 5 bf16, 6 int16, 7 uint16; 14 int32, 15 uint32 in
newer writers) and the strings that ops such as ``cast`` / ``quantize`` take
(``"fp16"``, ``"int8"`` ...). Sub-byte types (int4, uint1-6) and bf16 / fp8 are
named so an error can say what it met, but are not executed.
"""
from __future__ import annotations

import numpy as np

# MIL.proto DataType enum value -> (name, numpy dtype or None when not executable)
PROTO_TYPES: dict[int, tuple[str, np.dtype | None]] = {
    1: ("bool", np.dtype(np.bool_)),
    2: ("string", None),
    10: ("fp16", np.dtype(np.float16)),
    11: ("fp32", np.dtype(np.float32)),
    12: ("fp64", np.dtype(np.float64)),
    13: ("bf16", None),
    21: ("int8", np.dtype(np.int8)),
    22: ("int16", np.dtype(np.int16)),
    23: ("int32", np.dtype(np.int32)),
    24: ("int64", np.dtype(np.int64)),
    25: ("int4", None),
    31: ("uint8", np.dtype(np.uint8)),
    32: ("uint16", np.dtype(np.uint16)),
    33: ("uint32", np.dtype(np.uint32)),
    34: ("uint64", np.dtype(np.uint64)),
    35: ("uint4", None),
    36: ("uint2", None),
    37: ("uint1", None),
    38: ("uint6", None),
    39: ("uint3", None),
    40: ("fp8e4m3fn", None),
    41: ("fp8e5m2", None),
}

# weight.bin blob_metadata.mil_dtype -> numpy dtype
BLOB_TYPES: dict[int, np.dtype] = {
    1: np.dtype("<f2"), 2: np.dtype("<f4"), 3: np.dtype(np.uint8), 4: np.dtype(np.int8),
    6: np.dtype("<i2"), 7: np.dtype("<u2"), 14: np.dtype("<i4"), 15: np.dtype("<u4"),
}

# dtype strings used as op parameters (cast.dtype, quantize.output_dtype)
NAMED: dict[str, np.dtype] = {
    "fp16": np.dtype(np.float16), "fp32": np.dtype(np.float32), "fp64": np.dtype(np.float64),
    "int8": np.dtype(np.int8), "uint8": np.dtype(np.uint8), "int16": np.dtype(np.int16),
    "uint16": np.dtype(np.uint16), "int32": np.dtype(np.int32), "uint32": np.dtype(np.uint32),
    "int64": np.dtype(np.int64), "bool": np.dtype(np.bool_),
}


def proto_name(code: int) -> str:
    return PROTO_TYPES.get(code, (f"dtype#{code}", None))[0]


def proto_dtype(code: int) -> np.dtype | None:
    """NumPy dtype for a MIL.proto DataType, None for strings and types we do not execute."""
    return PROTO_TYPES.get(code, ("", None))[1]


def short(dtype: np.dtype | None) -> str:
    """``float16`` -> ``fp16`` (the MIL spelling), for messages and op tables."""
    if dtype is None:
        return "string"
    for name, dt in NAMED.items():
        if dt == dtype:
            return name
    return str(dtype)
