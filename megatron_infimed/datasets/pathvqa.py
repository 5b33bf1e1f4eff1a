"""PathVQA as a JSON list of ``{"image", "question", "answer", "qid"?, "answer_type"?}``.

The original release has no question ids: an entry's id is its ``qid`` when it has one, else its
0-based index. Images are named without suffix (``train_0001``); ``resolve_image`` finds the file.
The split is written in the image name:

| image name | split      |
|------------|------------|
| train_*    | train      |
| val_*      | validation |
| test_*     | test       |
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path

from megatron_infimed.datasets.entries import Entry, ReleaseRead, ReleaseRow, read_json_entries
from megatron_infimed.datasets.files import image_folder, resolve_image

SPLIT_OF_IMAGE_PREFIX = {"train_": "train", "val_": "validation", "test_": "test"}


@dataclass(frozen=True, kw_only=True, slots=True)
class PathVqaRow(ReleaseRow):
    answer_type: str | None  # upper case when the file carries it, e.g. "CLOSED"


def read(path: str | Path, *, image_root: str | Path | None = None) -> ReleaseRead[PathVqaRow]:
    folder = image_folder(path, image_root)
    return read_json_entries(Path(path), partial(_row, folder=folder), folder)


def _split(image_name: str) -> str | None:
    stem = Path(image_name).name
    return next((split for prefix, split in SPLIT_OF_IMAGE_PREFIX.items() if stem.startswith(prefix)), None)


def _row(entry: Entry, *, folder: Path) -> PathVqaRow:
    entry.read_id("qid", optional=True)
    answer = entry.text("answer")
    question = entry.text("question")
    image_name = entry.text("image")
    answer_type = entry.label("answer_type")
    return PathVqaRow(
        id=entry.id, question=question, answer=answer, image=resolve_image(folder, image_name),
        split=_split(image_name), where=entry.where, answer_type=answer_type.upper() if answer_type else None,
    )
