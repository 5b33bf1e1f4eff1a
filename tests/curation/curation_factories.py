"""Helpers for the curation tests: tiny images and input files written on the fly."""

from __future__ import annotations

import json
import os

import numpy as np
from PIL import Image


def textured(size=(64, 64), seed=0, mode="L") -> Image.Image:
    """A noisy gradient: passes every image-quality rule and hashes differently per seed."""
    rng = np.random.default_rng(seed)
    w, h = size
    base = np.add.outer(np.linspace(0, 150, h), np.linspace(0, 80, w)) + rng.integers(0, 60, (h, w))
    arr = np.clip(base, 0, 255).astype(np.uint8)
    img = Image.fromarray(arr, "L")
    return img.convert(mode) if mode != "L" else img


def save(img: Image.Image, path, fmt=None) -> str:
    img.save(path, format=fmt)
    return os.path.basename(str(path))


def write_jsonl(path, rows) -> str:
    with open(path, "wb") as f:
        for row in rows:
            f.write(row if isinstance(row, bytes) else (json.dumps(row) + "\n").encode())
    return str(path)


def llava(rid, image, question="Is there a lesion in the liver?", answer="yes", **extra) -> dict:
    conv = [{"from": "human", "value": f"<image>\n{question}"}, {"from": "gpt", "value": answer}]
    return {"id": rid, "image": image, "conversations": conv, **extra}



def bomb_png(width: int = 100_000, height: int = 100_000) -> bytes:
    """A PNG whose header claims a gigantic size, with almost no pixel data."""
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


GOOD_QUESTIONS = ["Is there a lesion in the liver?", "Is the heart enlarged?", "Is there a pleural effusion?",
                  "Is the kidney normal?", "Is there a fracture of the rib?", "Is the spleen enlarged?"]


def bad_input_dataset(root) -> tuple[str, dict[str, str | None]]:
    """A llava JSONL with six good records and one record of every bad-input class.

    Returns (path, expected first reason per id; None = kept).
    """
    import io

    images = root / "images"
    images.mkdir()
    rows, expected = [], {}
    for i, question in enumerate(GOOD_QUESTIONS):
        save(textured(seed=i), images / f"good{i}.png")
        rows.append(llava(f"good-{i}", f"images/good{i}.png", question=question))
        expected[f"good-{i}"] = None
    buf = io.BytesIO()
    textured((128, 128), seed=99).save(buf, format="JPEG")
    (images / "truncated.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    (images / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    (images / "empty.png").write_bytes(b"")
    (images / "bomb.png").write_bytes(bomb_png())
    bad = {
        "truncated": ("images/truncated.jpg", "load/truncated_image"),
        "corrupt": ("images/corrupt.png", "load/corrupt_image"),
        "missing": ("images/nowhere.png", "load/missing_image"),
        "empty-file": ("images/empty.png", "load/empty_file"),
        "bomb": ("images/bomb.png", "load/decompression_bomb"),
    }
    for rid, (image, reason) in bad.items():
        rows.append(llava(rid, image))
        expected[rid] = reason
    rows.append(b'{"id": "malformed", "image": "images/good0.png", "conversations": [\n')
    expected["reports.jsonl:12"] = "parse/malformed_json"
    rows.append(json.dumps(llava("non-utf8", "images/good1.png", answer="XX")).encode().replace(b"XX", b"caf\xe9 \xff")
                + b"\n")
    expected["non-utf8"] = "text_quality/invalid_utf8"
    rows.append({"id": "empty-conv", "image": "images/good2.png", "conversations": []})
    expected["empty-conv"] = "parse/empty_conversation"
    rows.append({"id": "no-answer", "image": "images/good3.png",
                 "conversations": [{"from": "human", "value": "<image>\nIs there a lesion?"}]})
    expected["no-answer"] = "parse/no_assistant_turn"
    rows.append(llava("two-placeholders", "images/good4.png", question="<image>\nIs there a lesion in the liver?"))
    expected["two-placeholders"] = "image_text_consistency/placeholder_mismatch"
    path = write_jsonl(root / "reports.jsonl", rows)
    return path, expected
