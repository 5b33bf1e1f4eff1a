"""Test helpers for tests/data: synthetic contract samples and ``write_dataset``, which lays out
shards + manifest.json by the shard contract with ``webdataset.TarWriter`` (curation's writer is
not used, so these tests pin the contract independently)."""

from __future__ import annotations

import io
import json
import random
from pathlib import Path

import numpy as np
import webdataset as wds
from PIL import Image

WORDS = ("the chest x-ray shows a small nodule in the left lower lung no fracture is seen ct scan of the "
         "brain mri liver kidney what organ is abnormal yes is there an effusion describe the image").split()


def encode_png(width: int = 16, height: int = 16, seed: int = 0, mode: str = "RGB") -> bytes:
    rng = np.random.default_rng(seed)
    channels = {"RGB": 3, "L": 1}[mode]
    array = rng.integers(0, 256, (height, width, channels), dtype=np.uint8).squeeze()
    buffer = io.BytesIO()
    Image.fromarray(array, mode=mode).save(buffer, format="PNG")
    return buffer.getvalue()


def make_sample(key: str, num_images: int = 1, answer_words: int = 5, question_words: int = 6,
                source: str = "synthetic-medical", seed: int = 0) -> dict:
    """A contract sample: conversations with one <image> per image, members png / 0.png, 1.png."""
    rng = random.Random(seed)
    question = " ".join(rng.choice(WORDS) for _ in range(question_words))
    answer = " ".join(rng.choice(WORDS) for _ in range(answer_words))
    members = ["png"] if num_images == 1 else [f"{i}.png" for i in range(num_images)]
    members = members if num_images else []
    return {
        "key": key,
        "json": {"id": key, "source": source,
                 "conversations": [{"from": "human", "value": "<image>\n" * num_images + question},
                                   {"from": "gpt", "value": answer}],
                 "image_members": members, "metadata": {}, "quality": {"decision": "keep"}},
        "images": {ext: encode_png(seed=seed + i) for i, ext in enumerate(members)},
    }


def write_dataset(root: Path, samples: list[dict], shard_sizes: list[int]) -> Path:
    """Write ``samples`` into shards of the given sizes plus manifest.json; returns ``root``.
    A sample may carry ``"raw_json": bytes`` to store a corrupt json member."""
    assert sum(shard_sizes) == len(samples), (shard_sizes, len(samples))
    (root / "shards").mkdir(parents=True, exist_ok=True)
    shards, start = [], 0
    for i, size in enumerate(shard_sizes):
        rel = f"shards/shard-{i:06d}.tar"
        with wds.TarWriter(str(root / rel)) as writer:
            for s in samples[start:start + size]:
                record = {"__key__": s["key"], "json": s.get("raw_json", json.dumps(s["json"]).encode())}
                record.update(s["images"])
                writer.write(record)
        shards.append({"path": rel, "samples": size})
        start += size
    manifest = {"version": 1, "shards": shards, "total_samples": len(samples),
                "samples": [{"key": s["key"], "shard": 0} for s in samples]}
    (root / "manifest.json").write_text(json.dumps(manifest))
    return root


def split_loader_options(options: dict):
    """Flat loader options, as tests write them, → (data section, batch section, seed)."""
    from dataclasses import fields

    from megatron_infimed.config.run import BatchSection, DataConfig

    batch_keys = {f.name for f in fields(BatchSection)}
    batch = BatchSection(**{k: v for k, v in options.items() if k in batch_keys})
    data = DataConfig(**{k: v for k, v in options.items() if k not in batch_keys and k != "seed"})
    return data, batch, options.get("seed", 1234)
