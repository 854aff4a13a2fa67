"""The ML Program weight file (``weights/weight.bin``), read by offset.

Format (MILBlob storage, version 2; coremltools ``mlmodel/src/MILBlob/Blob/StorageFormat.hpp``):
a 64-byte ``storage_header`` (uint32 count, uint32 version = 2, reserved) followed by
64-byte aligned pairs of ``blob_metadata`` and raw data. ``blob_metadata`` is
uint32 sentinel ``0xDEADBEEF``, uint32 data type (``BlobDataType``), uint64 size in
bytes, uint64 offset of the data in the file, then reserved words. A ``const`` in the
program names the file and the offset of the *metadata* record
(``BlobFileValue{fileName: "@model_path/weights/weight.bin", offset}``).

Values are read from the bytes on disk every time a package is opened, so changing a
weight in the file changes what the interpreter computes (the negative test relies on it).
"""
from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

from edgekit.errors import ArtifactError

from .dtypes import BLOB_TYPES

SENTINEL = 0xDEADBEEF
HEADER = struct.Struct("<II")          # count, version (then 56 reserved bytes)
METADATA = struct.Struct("<IIQQ")      # sentinel, dtype, size in bytes, data offset (then reserved)
ALIGN = 64


class BlobFile:
    """Random access to one weight file. ``read(offset)`` returns a flat NumPy array."""

    def __init__(self, path: Path):
        self.path = Path(path)
        try:
            self._data = np.fromfile(self.path, dtype=np.uint8)
        except OSError as exc:
            raise ArtifactError(f"cannot read weight file {self.path}: {exc}") from None
        if self._data.size < ALIGN:
            raise ArtifactError(f"weight file {self.path.name} is truncated ({self._data.size} bytes)")
        self.count, self.version = HEADER.unpack_from(self._data, 0)
        if self.version != 2:
            raise ArtifactError(f"weight file {self.path.name}: storage version {self.version}, expected 2",
                                hint="re-export with coremltools >= 5")

    def read(self, offset: int) -> np.ndarray:
        """The blob whose metadata record starts at ``offset``, as a flat array of its stored type."""
        if offset % ALIGN or offset + METADATA.size > self._data.size:
            raise ArtifactError(f"weight file {self.path.name}: bad blob offset {offset}")
        sentinel, code, size, data_offset = METADATA.unpack_from(self._data, offset)
        if sentinel != SENTINEL:
            raise ArtifactError(f"weight file {self.path.name}: no blob metadata at offset {offset} "
                                f"(sentinel {sentinel:#x})", hint="the package is corrupt; re-export it")
        dtype = BLOB_TYPES.get(code)
        if dtype is None:
            raise ArtifactError(f"weight file {self.path.name}: blob at {offset} has data type code {code}, "
                                "which the MIL interpreter does not read (sub-byte or bf16 weights)")
        if data_offset + size > self._data.size or size % dtype.itemsize:
            raise ArtifactError(f"weight file {self.path.name}: blob at {offset} runs past the end of the file")
        raw = self._data[data_offset:data_offset + size]
        return raw.view(dtype).astype(dtype.newbyteorder("="), copy=True)
