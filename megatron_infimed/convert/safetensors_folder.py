"""Read a Hugging Face safetensors folder lazily: one ``model.safetensors`` or shards with an index.

Only names and shapes are read up front (from the safetensors headers), so every check of an
import runs before a single weight is loaded; weights are then read one tensor at a time.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open

INDEX = "model.safetensors.index.json"


class SafetensorsFolder:
    def __init__(self, path: str | Path, what: str):
        self.path, self.what = Path(path), what
        files = self._files()
        self._file_of: dict[str, Path] = {}
        self.shapes: dict[str, tuple[int, ...]] = {}
        for file in files:
            with safe_open(file, framework="pt") as handle:
                for name in handle.keys():
                    self._file_of[name] = file
                    self.shapes[name] = tuple(handle.get_slice(name).get_shape())
        self._handles: dict[Path, object] = {}

    def _files(self) -> list[Path]:
        if self.path.is_file():
            return [self.path]
        if not self.path.is_dir():
            raise FileNotFoundError(f"{self.what} checkpoint {self.path} does not exist")
        index = self.path / INDEX
        if index.is_file():
            weight_map = json.loads(index.read_text()).get("weight_map")
            if not isinstance(weight_map, dict):
                raise ValueError(f"{index} has no 'weight_map'")
            files = sorted({self.path / name for name in weight_map.values()})
            missing = [f.name for f in files if not f.is_file()]
            if missing:
                raise FileNotFoundError(f"{index} lists shard(s) {missing} that are not in {self.path}")
            return files
        files = sorted(self.path.glob("*.safetensors"))
        if not files:
            raise FileNotFoundError(f"{self.what} checkpoint {self.path} holds no *.safetensors file "
                                    f"(and no {INDEX})")
        return files

    def names(self) -> list[str]:
        return list(self.shapes)

    def get(self, name: str) -> torch.Tensor:
        file = self._file_of[name]
        if file not in self._handles:
            self._handles[file] = safe_open(file, framework="pt")
        return self._handles[file].get_tensor(name)
