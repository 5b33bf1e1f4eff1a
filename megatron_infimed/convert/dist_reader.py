"""Read single tensors (or one layer of a stacked tensor) from a megatron-core torch_dist checkpoint.

megatron-core saves with torch.distributed.checkpoint (DCP): ``.metadata`` describes every global
tensor and the chunks each rank wrote; ``__R_S.distcp`` files hold the bytes. The global tensor is
the same whatever TP/PP layout wrote it, so reading by global offsets is layout independent:

| stored key                                               | global shape        |
|----------------------------------------------------------|---------------------|
| language_model.embedding.word_embeddings.weight          | [vocab, hidden]     |
| language_model.decoder.layers.self_attention.linear_qkv.weight | [layers, qkv, hidden] (layer axis prepended) |

megatron-core writes one DCP chunk per layer of a stacked tensor (and per TP/PP shard), each as a
``torch.save`` archive inside a ``.distcp`` file. When that archive's storage record is an
uncompressed, contiguous tensor and the requested box is one contiguous byte range of it, the box
is memory-mapped (one record holds it all: no copy until used) or copied straight into the output
(several records, e.g. TP shards: one copy, no intermediate tensor). Any other chunk goes through
DCP's own reader (``create_read_items_for_chunk_list``) for just that slice. Either way memory
holds the requested slice only.

``.metadata`` is a pickle: it is read once, with an unpickler that admits only DCP's metadata
classes and torch sizes/dtypes, never arbitrary objects.
"""

from __future__ import annotations

import collections
import io
import math
import mmap
import os
import pickle
import struct
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
from torch.distributed.checkpoint.metadata import (
    ChunkStorageMetadata,
    Metadata,
    MetadataIndex,
    StorageMeta,
    TensorStorageMetadata,
)
from torch.distributed.checkpoint.planner import LoadPlan
from torch.distributed.checkpoint.planner_helpers import create_read_items_for_chunk_list

from megatron_infimed.checkpoint.metadata import read_metadata

# megatron-core's local layer spec stores the decoder's two pre-norms under the names Transformer
# Engine's fused linears use; the TE vision spec does the same for the ViT's LayerNorms.
_STORED_ALIASES = {
    "input_layernorm.weight": ("self_attention.linear_qkv.layer_norm_weight",),
    "input_layernorm.bias": ("self_attention.linear_qkv.layer_norm_bias",),
    "pre_mlp_layernorm.weight": ("mlp.linear_fc1.layer_norm_weight",),
    "pre_mlp_layernorm.bias": ("mlp.linear_fc1.layer_norm_bias",),
}


class _SafeReader(dcp.FileSystemReader):
    """DCP's reader with a safe, once-only metadata load (``dcp.load`` asks for it on every call)."""

    _metadata: Metadata | None = None

    def read_metadata(self, *args, **kwargs) -> Metadata:
        if self._metadata is None:
            metadata = read_metadata(self.path)
            if getattr(metadata, "storage_meta", None) is None:
                metadata.storage_meta = StorageMeta()
            self._metadata = metadata
        self._metadata.storage_meta.load_id = self.load_id
        return self._metadata


@dataclass(frozen=True)
class _Record:
    """Where one stored chunk's bytes start: a contiguous tensor of the chunk's shape and dtype."""
    file: str
    start: int


class _FileSlice(io.RawIOBase):
    """A read-only window ``[offset, offset + length)`` of an open file, for ``zipfile``. Its first
    and last 4 KiB (local headers, central directory) are read once: zipfile reads them in many
    small pieces, and a torch.save archive's metadata all lies there."""

    EDGE = 4096

    def __init__(self, fd: int, offset: int, length: int):
        super().__init__()
        self.fd, self.offset, self.length, self.position = fd, offset, length, 0
        head = min(length, self.EDGE)
        self._edges = [(0, os.pread(fd, head, offset))]
        if length > head:
            tail = min(length - head, self.EDGE)
            self._edges.append((length - tail, os.pread(fd, tail, offset + length - tail)))

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, position: int, whence: int = 0) -> int:
        self.position = (position, self.position + position, self.length + position)[whence]
        return self.position

    def tell(self) -> int:
        return self.position

    def readinto(self, buffer) -> int:
        view = memoryview(buffer).cast("B")[:max(0, self.length - self.position)]
        for start, data in self._edges:
            if start <= self.position and self.position + len(view) <= start + len(data):
                view[:] = data[self.position - start:self.position - start + len(view)]
                count = len(view)
                break
        else:
            count = _pread_into(self.fd, view, self.offset + self.position)
        self.position += count
        return count


def _pread_into(fd: int, view: memoryview, offset: int) -> int:
    """Read into ``view`` at ``offset`` of ``fd``: straight into it where the OS has ``preadv``
    (Linux, BSD), through a temporary ``bytes`` elsewhere (e.g. older macOS Pythons)."""
    if hasattr(os, "preadv"):
        return os.preadv(fd, [view], offset)
    data = os.pread(fd, len(view), offset)
    view[:len(data)] = data
    return len(data)


def _read_exactly(fd: int, view: memoryview, offset: int, where: str) -> None:
    done = 0
    while done < len(view):
        count = _pread_into(fd, view[done:], offset + done)
        if count == 0:
            raise ValueError(f"{where} ends {len(view) - done} bytes early: the checkpoint file is truncated")
        done += count


class _SlicePlanner(DefaultLoadPlanner):
    """Reads one ``[offsets, offsets + sizes)`` box of one stored tensor."""

    def __init__(self, key: str, offsets: tuple[int, ...], sizes: tuple[int, ...]):
        super().__init__()
        self.box = (key, offsets, sizes)

    def create_local_plan(self) -> LoadPlan:
        key, offsets, sizes = self.box
        chunk = ChunkStorageMetadata(offsets=torch.Size(offsets), sizes=torch.Size(sizes))
        return LoadPlan(create_read_items_for_chunk_list(key, self.metadata.state_dict_metadata[key], [chunk]))

    def lookup_tensor(self, index):
        # The destination is a plain tensor holding just the box; DCP's lookup expects offset 0.
        return self.state_dict[index.fqn]


class DistCheckpointReader:
    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        if not (self.directory / ".metadata").is_file():
            raise FileNotFoundError(f"{self.directory} is not a torch_dist checkpoint (no .metadata file)")
        self._reader = _SafeReader(str(self.directory))
        self.metadata = self._reader.read_metadata()
        self.tensors = {k: v for k, v in self.metadata.state_dict_metadata.items()
                        if isinstance(v, TensorStorageMetadata)}
        self._fds: dict[str, int] = {}
        self._records: dict[tuple[str, tuple[int, ...]], _Record | None] = {}

    def close(self) -> None:
        for fd in getattr(self, "_fds", {}).values():
            os.close(fd)
        getattr(self, "_fds", {}).clear()

    def __enter__(self) -> DistCheckpointReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        self.close()

    def locate(self, name: str, layer: int | None) -> tuple[str, int | None]:
        """Stored key (and layer index into its prepended axis) of megatron parameter ``name``."""
        candidates = [name]
        if layer is not None:
            prefix, suffix = name.split(f".layers.{layer}.")
            candidates = [f"{prefix}.layers.{s}" for s in (suffix, *_STORED_ALIASES.get(suffix, ()))]
            candidates += [f"{prefix}.layers.{layer}.{s}" for s in (suffix, *_STORED_ALIASES.get(suffix, ()))]
        for key in candidates:
            if key in self.tensors:
                stacked = layer is not None and f".layers.{layer}." not in key
                return key, (layer if stacked else None)
        raise KeyError(f"checkpoint {self.directory} has no tensor for parameter '{name}' (looked for "
                       f"{candidates})")

    def shape(self, name: str, layer: int | None) -> tuple[int, ...]:
        key, index = self.locate(name, layer)
        size = tuple(self.tensors[key].size)
        return size[1:] if index is not None else size

    def dtype(self, name: str, layer: int | None) -> torch.dtype:
        return self.tensors[self.locate(name, layer)[0]].properties.dtype

    def read(self, name: str, layer: int | None) -> torch.Tensor:
        """The global tensor (or one layer of a stacked one). When one stored record holds it whole,
        the result is a copy-on-write memory map of the checkpoint file: no bytes are copied until
        they are used, and writes to it never reach the file."""
        key, offsets, sizes, index = self._box(name, layer)
        meta = self.tensors[key]
        dtype = meta.properties.dtype
        plan = self._direct_plan(key, meta, offsets, sizes, dtype)
        if plan is not None and len(plan) == 1 and plan[0][2] == tuple(slice(0, n) for n in sizes):
            out = self._map(plan[0][0], plan[0][1], sizes, dtype, key)
        else:
            out = torch.empty(sizes, dtype=dtype)
            if plan is None:
                self._read_dcp(key, offsets, out)
            for file, start, box in plan or ():
                target = out[box]
                buffer = target if target.is_contiguous() else torch.empty(target.shape, dtype=dtype)
                view = memoryview(buffer.reshape(-1).view(torch.uint8).numpy()) if buffer.numel() else memoryview(b"")
                _read_exactly(self._fd(file), view, start, f"{self.directory / file} (tensor {key})")
                if buffer is not target:
                    target.copy_(buffer)
        return out[0] if index is not None else out

    def _box(self, name: str, layer: int | None) -> tuple[str, tuple[int, ...], tuple[int, ...], int | None]:
        """(stored key, box offsets, box sizes, layer index or None) of a parameter."""
        key, index = self.locate(name, layer)
        size = tuple(self.tensors[key].size)
        if index is None:
            return key, (0,) * len(size), size, None
        return key, (index,) + (0,) * (len(size) - 1), (1,) + size[1:], index

    def row_sources(self, name: str, layer: int | None) -> list[tuple[int, int, int, int]] | None:
        """Where the parameter's rows (first dim) lie in the checkpoint files, as (first row, rows,
        fd, byte offset) runs covering every row in order; None unless the stored records split it
        by rows only and each can be read directly. A record split along another dim (a
        row-parallel TP shard) does not qualify. The fds stay open until ``close``."""
        key, offsets, sizes, index = self._box(name, layer)
        meta = self.tensors[key]
        row_dim = 0 if index is None else 1
        if len(sizes) <= row_dim:  # a scalar has no rows
            return None
        plan = self._direct_plan(key, meta, offsets, sizes, meta.properties.dtype)
        if plan is None:
            return None
        runs = []
        for file, start, box in plan:
            if any(box[d] != slice(0, sizes[d]) for d in range(len(sizes)) if d != row_dim):
                return None
            runs.append((box[row_dim].start, box[row_dim].stop - box[row_dim].start, self._fd(file), start))
        runs.sort()
        covered = 0
        for first, rows, _, _ in runs:
            if first != covered:
                return None
            covered += rows
        return runs if covered == sizes[row_dim] else None

    def _read_dcp(self, key: str, offsets: tuple[int, ...], out: torch.Tensor) -> None:
        with warnings.catch_warnings():  # "torch.distributed is disabled ...": single-process reading is the intent
            warnings.filterwarnings("ignore", message="torch.distributed is disabled")
            dcp.load({key: out}, storage_reader=self._reader, planner=_SlicePlanner(key, offsets, tuple(out.shape)),
                     no_dist=True)

    def _direct_plan(self, key: str, meta: TensorStorageMetadata, offsets: tuple[int, ...],
                     sizes: tuple[int, ...], dtype: torch.dtype) -> list[tuple[str, int, tuple[slice, ...]]] | None:
        """For each stored chunk overlapping the box: (file, byte offset, the box's slice it fills);
        None when some overlapping chunk is not one contiguous byte range (DCP reads those)."""
        plan = []
        for chunk in meta.chunks:
            lo = [max(o, c) for o, c in zip(offsets, chunk.offsets)]
            hi = [min(o + n, c + m) for o, n, c, m in zip(offsets, sizes, chunk.offsets, chunk.sizes)]
            if any(a >= b for a, b in zip(lo, hi)):
                continue
            record = self._record(key, chunk, dtype)
            if record is None or not _contiguous_box([b - a for a, b in zip(lo, hi)], list(chunk.sizes)):
                return None
            inner = [a - c for a, c in zip(lo, chunk.offsets)]
            start = record.start + _linear_index(inner, list(chunk.sizes)) * dtype.itemsize
            plan.append((record.file, start, tuple(slice(a - o, b - o) for a, b, o in zip(lo, hi, offsets))))
        return plan

    def _map(self, file: str, start: int, shape: tuple[int, ...], dtype: torch.dtype, key: str) -> torch.Tensor:
        count = math.prod(shape)
        if count == 0:
            return torch.empty(shape, dtype=dtype)
        aligned = start - start % mmap.ALLOCATIONGRANULARITY
        length = start + count * dtype.itemsize - aligned
        if os.fstat(self._fd(file)).st_size < aligned + length:
            raise ValueError(f"{self.directory / file} (tensor {key}) ends before its data: the checkpoint "
                             f"file is truncated")
        region = mmap.mmap(self._fd(file), length, offset=aligned, access=mmap.ACCESS_COPY)
        return torch.frombuffer(region, dtype=dtype, count=count, offset=start - aligned).view(shape)

    # A checkpoint of many ranks has many files; keep a bounded number open (memory maps stay valid
    # after their descriptor closes, and callers use a descriptor right after asking for it).
    MAX_OPEN_FILES = 64

    def _fd(self, file: str) -> int:
        if file in self._fds:
            self._fds[file] = self._fds.pop(file)  # most recently used last
        else:
            while len(self._fds) >= self.MAX_OPEN_FILES:
                os.close(self._fds.pop(next(iter(self._fds))))
            self._fds[file] = os.open(self.directory / file, os.O_RDONLY)
        return self._fds[file]

    def _record(self, key: str, chunk: ChunkStorageMetadata, dtype: torch.dtype) -> _Record | None:
        """Where the chunk's tensor bytes start, or None unless it is a plain, uncompressed, contiguous
        ``torch.save`` of a tensor of the chunk's shape and dtype (then DCP reads it)."""
        cache_key = (key, tuple(chunk.offsets))
        if cache_key not in self._records:
            self._records[cache_key] = self._find_record(key, chunk, dtype)
        return self._records[cache_key]

    def _find_record(self, key: str, chunk: ChunkStorageMetadata, dtype: torch.dtype) -> _Record | None:
        info = self.metadata.storage_data.get(MetadataIndex(key, chunk.offsets))
        if info is None or getattr(info, "transform_descriptors", None):
            return None
        fd = self._fd(info.relative_path)
        if os.fstat(fd).st_size < info.offset + info.length:
            raise ValueError(f"{self.directory / info.relative_path} is truncated: tensor {key}'s record ends at "
                             f"byte {info.offset + info.length}, the file has {os.fstat(fd).st_size}")
        try:
            archive = zipfile.ZipFile(_FileSlice(fd, info.offset, info.length))
        except zipfile.BadZipFile:
            return None  # not a torch.save archive (e.g. another serialization format)
        with archive:
            pickles = [i for i in archive.infolist() if i.filename.endswith("/data.pkl")]
            layout = _stored_layout(archive.read(pickles[0])) if len(pickles) == 1 else None
            if layout is None:
                return None
            record_key, stored_dtype, offset, size, stride = layout
            if (stored_dtype != dtype or offset != 0 or size != tuple(chunk.sizes)
                    or stride != _contiguous_strides(size)):
                return None  # not one row-major run of bytes
            name = pickles[0].filename.removesuffix("data.pkl") + f"data/{record_key}"
            try:
                record = archive.getinfo(name)
            except KeyError:
                return None
            if record.compress_type != zipfile.ZIP_STORED or record.file_size != math.prod(size) * dtype.itemsize:
                return None
            local = os.pread(fd, 30, info.offset + record.header_offset)
            if len(local) != 30 or local[:4] != b"PK\x03\x04":
                return None
            name_length, extra_length = struct.unpack("<HH", local[26:30])
            start = info.offset + record.header_offset + 30 + name_length + extra_length
        return _Record(info.relative_path, start)


_STORAGE_DTYPES = {"FloatStorage": torch.float32, "BFloat16Storage": torch.bfloat16, "HalfStorage": torch.float16,
                   "DoubleStorage": torch.float64, "LongStorage": torch.int64, "IntStorage": torch.int32,
                   "ByteStorage": torch.uint8}


class _TensorLayoutUnpickler(pickle.Unpickler):
    """Reads how a ``torch.save``'d tensor lies in its storage without building it. Admits only
    torch's tensor rebuild function, storage class names and OrderedDict (the hooks argument)."""

    def find_class(self, module: str, name: str):
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return lambda storage, offset, size, stride, *rest: (storage, offset, tuple(size), tuple(stride))
        if module == "torch" and name in _STORAGE_DTYPES:
            return _STORAGE_DTYPES[name]
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        raise pickle.UnpicklingError(f"unexpected {module}.{name}")

    def persistent_load(self, pid):
        return pid  # ("storage", dtype, record key, location, numel)


def _stored_layout(data_pkl: bytes) -> tuple[str, torch.dtype, int, tuple[int, ...], tuple[int, ...]] | None:
    """(record key, dtype, storage offset, size, stride) of the one tensor pickled, or None."""
    try:
        found = _TensorLayoutUnpickler(io.BytesIO(data_pkl)).load()
    except (pickle.UnpicklingError, EOFError, TypeError, ValueError):
        return None
    if not (isinstance(found, tuple) and len(found) == 4 and isinstance(found[0], tuple) and len(found[0]) >= 3
            and found[0][0] == "storage" and isinstance(found[0][1], torch.dtype)):
        return None
    storage, offset, size, stride = found
    return str(storage[2]), storage[1], offset, size, stride


def _contiguous_strides(size: tuple[int, ...]) -> tuple[int, ...]:
    strides, step = [], 1
    for n in reversed(size):
        strides.append(step)
        step *= max(n, 1)
    return tuple(reversed(strides))


def _contiguous_box(sizes: list[int], shape: list[int]) -> bool:
    """Is a box of ``sizes`` one contiguous run of a row-major tensor of ``shape``? Yes when the
    dims after the last partial one are full and those before it are 1: one layer of [L, a, b],
    rows of [a, b]; not columns of [a, b]."""
    partial = [d for d in range(len(shape)) if sizes[d] != shape[d]]
    return not partial or all(sizes[d] == 1 for d in range(partial[-1]))


def _linear_index(offsets: list[int], shape: list[int]) -> int:
    index = 0
    for offset, size in zip(offsets, shape):
        index = index * size + offset
    return index
