"""Write a ``.safetensors`` file one tensor at a time, straight from each tensor's memory.

``safetensors.torch.save_file`` needs every tensor of a file in memory at once and copies each
into a ``bytes`` object before writing. An export knows every name, dtype and shape before it
reads a weight, so it can write the header first and then stream the tensors: memory holds one
tensor, and each byte is copied once (tensor → file). The layout is the format's own:

    [8 bytes: header length N, little-endian u64][N bytes: JSON header, space-padded to 8][data]

with each header entry ``{"dtype", "shape", "data_offsets": [begin, end]}`` relative to the data
section, in write order and without holes. Files are read back with the ``safetensors`` library.

A tensor whose bytes already lie, unchanged, in other files (runs of a checkpoint's records) is
appended with ``copy``: file to file in the kernel (``copy_file_range``), never through this
process's memory.
"""

from __future__ import annotations

import errno
import json
import math
import os
import struct
import sys
from pathlib import Path

import torch

DTYPE_NAMES = {torch.float32: "F32", torch.bfloat16: "BF16", torch.float16: "F16", torch.float64: "F64",
               torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
               torch.bool: "BOOL"}


class SafetensorsWriter:
    """``with SafetensorsWriter(path, [(name, dtype, shape), ...]) as w: w.write(name, tensor) ...``

    Tensors must come in the order declared, with the declared dtype and shape; closing checks
    that every one was written."""

    def __init__(self, path: str | Path, specs: list[tuple[str, torch.dtype, tuple[int, ...]]],
                 metadata: dict[str, str] | None = None):
        if sys.byteorder != "little":  # the format is little-endian; tensors are written as they lie in memory
            raise RuntimeError("SafetensorsWriter writes raw tensor memory and needs a little-endian machine")
        self.path = Path(path)
        header: dict[str, object] = {"__metadata__": dict(metadata)} if metadata else {}
        self._pending: list[tuple[str, torch.dtype, tuple[int, ...], int]] = []
        offset = 0
        for name, dtype, shape in specs:
            if name in header:
                raise ValueError(f"{self.path}: tensor name {name!r} is declared twice")
            if dtype not in DTYPE_NAMES:
                raise ValueError(f"{self.path}: tensor {name!r} has dtype {dtype}, which safetensors "
                                 f"cannot hold here; expected one of {sorted(map(str, DTYPE_NAMES))}")
            nbytes = math.prod(shape) * dtype.itemsize
            header[name] = {"dtype": DTYPE_NAMES[dtype], "shape": list(shape),
                            "data_offsets": [offset, offset + nbytes]}
            self._pending.append((name, dtype, tuple(shape), nbytes))
            offset += nbytes
        text = json.dumps(header, separators=(",", ":")).encode()
        text += b" " * (-len(text) % 8)
        self.data_bytes = offset
        self._pending.reverse()  # pop() from the end = declaration order
        self._file = open(self.path, "wb", buffering=0)  # unbuffered: kernel copies go to its position
        try:
            self._write_all(memoryview(struct.pack("<Q", len(text)) + text))
        except BaseException:
            self._file.close()
            raise
        self._kernel_copy = hasattr(os, "copy_file_range")

    def _write_all(self, data: memoryview) -> None:
        done = 0
        while done < len(data):
            done += self._file.write(data[done:])

    def _next(self, name: str) -> tuple[str, torch.dtype, tuple[int, ...], int]:
        if not self._pending:
            raise ValueError(f"{self.path}: tensor {name!r} was not declared (all declared tensors are written)")
        if name != self._pending[-1][0]:
            raise ValueError(f"{self.path}: got tensor {name!r}, expected {self._pending[-1][0]!r} next "
                             f"(declaration order)")
        return self._pending[-1]

    def copy(self, name: str, runs: list[tuple[int, int, int]]) -> None:
        """Append tensor ``name`` from bytes already in other files, as (fd, offset, bytes) runs in
        order: file to file in the kernel (``copy_file_range``) where the file system allows,
        else through a bounded buffer."""
        _, _, _, nbytes = self._next(name)
        if sum(n for _, _, n in runs) != nbytes:
            raise ValueError(f"{self.path}: tensor {name!r} is declared as {nbytes} bytes, the runs hold "
                             f"{sum(n for _, _, n in runs)}")
        self._pending.pop()
        for fd, offset, count in runs:
            done = self._kernel_copy_run(fd, offset, count) if self._kernel_copy else 0
            while done < count:
                data = os.pread(fd, min(count - done, 64 << 20), offset + done)
                if not data:
                    raise ValueError(f"{self.path}: the source of tensor {name!r} ends {count - done} bytes early")
                self._write_all(memoryview(data))
                done += len(data)

    def _kernel_copy_run(self, fd: int, offset: int, count: int) -> int:
        """Bytes appended by kernel copies (all of them, or fewer if this file system refuses)."""
        done = 0
        try:
            while done < count:
                copied = os.copy_file_range(fd, self._file.fileno(), count - done, offset + done)
                if copied == 0:
                    break  # end of the source: the buffered path reports it
                done += copied
        except OSError as error:
            if error.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.EBADF):
                raise
            self._kernel_copy = False  # e.g. across file systems on older kernels: stop trying
        return done

    def write(self, name: str, tensor: torch.Tensor) -> None:
        _, dtype, shape, nbytes = self._next(name)
        if tensor.dtype != dtype or tuple(tensor.shape) != shape:
            raise ValueError(f"{self.path}: tensor {name!r} is {tensor.dtype} {tuple(tensor.shape)}, "
                             f"declared {dtype} {shape}")
        self._pending.pop()
        if not nbytes:
            return
        data = tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8)
        self._write_all(memoryview(data.numpy()))

    def close(self) -> None:
        if self._file.closed:
            return
        self._file.close()
        if self._pending:
            missing = [name for name, *_ in reversed(self._pending)]
            raise ValueError(f"{self.path}: closed before writing {len(missing)} declared tensor(s): {missing[:5]}")

    def __enter__(self) -> SafetensorsWriter:
        return self

    def __exit__(self, kind, error, trace) -> None:
        if kind is None:
            self.close()
        else:  # the caller's error explains the incomplete file; do not mask it
            self._file.close()
