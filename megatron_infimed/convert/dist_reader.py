"""Read single tensors (or one layer of a stacked tensor) from a megatron-core torch_dist checkpoint.

megatron-core saves with torch.distributed.checkpoint (DCP): ``.metadata`` describes every global
tensor and the chunks each rank wrote; ``__R_S.distcp`` files hold the bytes. The global tensor is
the same whatever TP/PP layout wrote it, so reading by global offsets is layout independent:

| stored key                                               | global shape        |
|----------------------------------------------------------|---------------------|
| language_model.embedding.word_embeddings.weight          | [vocab, hidden]     |
| language_model.decoder.layers.self_attention.linear_qkv.weight | [layers, qkv, hidden] (layer axis prepended) |

A read asks DCP for just the requested slice (``create_read_items_for_chunk_list``), so memory
holds that slice only. ``.metadata`` is a pickle: it is read with an unpickler that admits only
DCP's metadata classes and torch sizes/dtypes, never arbitrary objects.
"""

from __future__ import annotations

import pickle
import warnings
from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
from torch.distributed.checkpoint.metadata import ChunkStorageMetadata, Metadata, StorageMeta, TensorStorageMetadata
from torch.distributed.checkpoint.planner import LoadPlan
from torch.distributed.checkpoint.planner_helpers import create_read_items_for_chunk_list

# megatron-core's local layer spec stores the decoder's two pre-norms under the names Transformer
# Engine's fused linears use; the TE vision spec does the same for the ViT's LayerNorms.
_STORED_ALIASES = {
    "input_layernorm.weight": ("self_attention.linear_qkv.layer_norm_weight",),
    "input_layernorm.bias": ("self_attention.linear_qkv.layer_norm_bias",),
    "pre_mlp_layernorm.weight": ("mlp.linear_fc1.layer_norm_weight",),
    "pre_mlp_layernorm.bias": ("mlp.linear_fc1.layer_norm_bias",),
}

_ALLOWED = {
    ("torch.distributed.checkpoint.metadata", n) for n in
    ("Metadata", "TensorStorageMetadata", "BytesStorageMetadata", "ChunkStorageMetadata", "TensorProperties",
     "MetadataIndex", "StorageMeta", "_MEM_FORMAT_ENCODING")
} | {
    ("torch.distributed.checkpoint.planner", n) for n in ("SavePlan", "WriteItem", "WriteItemType", "TensorWriteData")
} | {("torch.distributed.checkpoint.filesystem", "_StorageInfo"), ("torch.serialization", "_get_layout"),
     ("torch", "Size"), ("torch", "device"),
     ("torch", "layout"), ("torch", "memory_format"), ("collections", "OrderedDict"), ("builtins", "getattr"),
     ("torch", "dtype")} | {("torch", str(d).removeprefix("torch.")) for d in vars(torch).values()
                           if isinstance(d, (torch.dtype, torch.layout, torch.memory_format))}


class _MetadataUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) not in _ALLOWED:
            raise pickle.UnpicklingError(f"checkpoint metadata refers to {module}.{name}, which is not a "
                                         f"torch.distributed.checkpoint metadata class; refusing to load it")
        return super().find_class(module, name)


class _SafeReader(dcp.FileSystemReader):
    def read_metadata(self, *args, **kwargs) -> Metadata:
        with open(Path(self.path) / ".metadata", "rb") as file:
            metadata = _MetadataUnpickler(file).load()
        if getattr(metadata, "storage_meta", None) is None:
            metadata.storage_meta = StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        return metadata


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

    def read(self, name: str, layer: int | None) -> torch.Tensor:
        key, index = self.locate(name, layer)
        meta = self.tensors[key]
        size = tuple(meta.size)
        offsets, sizes = (0,) * len(size), size
        if index is not None:
            offsets, sizes = (index,) + offsets[1:], (1,) + size[1:]
        out = torch.empty(sizes, dtype=meta.properties.dtype)
        with warnings.catch_warnings():  # "torch.distributed is disabled ...": single-process reading is the intent
            warnings.filterwarnings("ignore", message="torch.distributed is disabled")
            dcp.load({key: out}, storage_reader=self._reader, planner=_SlicePlanner(key, offsets, sizes),
                     no_dist=True)
        return out[0] if index is not None else out
