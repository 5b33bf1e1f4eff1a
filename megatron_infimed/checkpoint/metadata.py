"""Reading a torch_dist checkpoint's ``.metadata`` without running code from it.

DCP's ``.metadata`` is a pickle, and plain ``pickle.load`` runs whatever a crafted file names.
``read_metadata`` admits only DCP's metadata classes and torch sizes, dtypes and layouts; every
path that loads a checkpoint (``--load``, ``--pretrained-checkpoint``, ``infimed-eval run``,
``export-hf``) reads the file through it first, so a hostile file fails before megatron-core or
DCP unpickle it their own way.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import torch
from torch.distributed.checkpoint.metadata import Metadata

_ALLOWED = {
    ("torch.distributed.checkpoint.metadata", n) for n in
    ("Metadata", "TensorStorageMetadata", "BytesStorageMetadata", "ChunkStorageMetadata", "TensorProperties",
     "MetadataIndex", "StorageMeta", "_MEM_FORMAT_ENCODING")
} | {
    ("torch.distributed.checkpoint.planner", n) for n in ("SavePlan", "WriteItem", "WriteItemType", "TensorWriteData")
} | {("torch.distributed.checkpoint.filesystem", "_StorageInfo"), ("torch.serialization", "_get_layout"),
     ("torch", "Size"), ("torch", "device"), ("pathlib", "PosixPath"),  # DCP may record the checkpoint path
     ("torch", "layout"), ("torch", "memory_format"), ("collections", "OrderedDict"), ("builtins", "getattr"),
     ("torch", "dtype")} | {("torch", str(d).removeprefix("torch.")) for d in vars(torch).values()
                           if isinstance(d, (torch.dtype, torch.layout, torch.memory_format))}


class UnsafeCheckpoint(pickle.UnpicklingError):
    """A checkpoint file names a Python object that no checkpoint of ours contains."""


class _MetadataUnpickler(pickle.Unpickler):
    def __init__(self, file, where: Path):
        super().__init__(file)
        self.where = where

    def find_class(self, module: str, name: str):
        if (module, name) not in _ALLOWED:
            raise UnsafeCheckpoint(f"{self.where} refers to {module}.{name}, which is not a "
                                   f"torch.distributed.checkpoint metadata class; refusing to load it")
        return super().find_class(module, name)


def read_metadata(directory: str | Path) -> Metadata:
    """The ``.metadata`` of a torch_dist folder, unpickled with the allowlist above."""
    path = Path(directory) / ".metadata"
    if not path.is_file():
        raise FileNotFoundError(f"{directory} is not a torch_dist checkpoint folder: it has no .metadata")
    with path.open("rb") as file:
        try:
            metadata = _MetadataUnpickler(file, path).load()
        except UnsafeCheckpoint:
            raise
        except (pickle.UnpicklingError, EOFError, AttributeError, TypeError, ValueError) as error:
            raise ValueError(f"{path} is not readable checkpoint metadata ({error})") from None
    if not isinstance(metadata, Metadata):
        raise UnsafeCheckpoint(f"{path} holds a {type(metadata).__name__}, not DCP Metadata")
    return metadata
