"""SLAKE (``Slake1.0``): one JSON file per split, English and Chinese questions, images in ``imgs/``.

| file          | split      |
|---------------|------------|
| train.json    | train      |
| validate.json | validation |
| test.json     | test       |

``language`` keeps the entries whose ``q_lang`` it names: "en" by default (English is what both
curation and evaluation use, and what MedEvalKit scores), "zh", or "all". ``q_lang`` is therefore
required of every entry, like VQA-RAD's ``phrase_type``. ``answer_type`` is an optional label, but
when present it must be CLOSED or OPEN: evaluation types its questions by it (and requires it).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path

from megatron_infimed.datasets.entries import Entry, ReleaseRead, ReleaseRow, read_json_entries
from megatron_infimed.datasets.files import image_folder, resolve_image

SPLIT_OF_FILE = {"train.json": "train", "validate.json": "validation", "test.json": "test"}
ANSWER_TYPES = ("CLOSED", "OPEN")


@dataclass(frozen=True, kw_only=True, slots=True)
class SlakeRow(ReleaseRow):
    q_lang: str  # "en" | "zh"
    answer_type: str | None  # "CLOSED" | "OPEN"
    content_type: str | None  # "Organ", "Position", "Abnormality", ...
    modality: str | None  # "CT", "MRI", "X-Ray"
    organ: str | None  # SLAKE's ``location``, lower case: "lung", "abdomen", ...
    img_id: int | None


def read(path: str | Path, *, language: str = "en", image_root: str | Path | None = None) -> ReleaseRead[SlakeRow]:
    """The entries whose ``q_lang`` is ``language`` ("all": every one); the others are counted as excluded."""
    folder = image_folder(path, image_root, "imgs")
    split = SPLIT_OF_FILE.get(Path(path).name)
    return read_json_entries(Path(path), partial(_row, language=language, split=split, folder=folder), folder)


def _row(entry: Entry, *, language: str, split: str | None, folder: Path) -> SlakeRow | None:
    entry.read_id("qid")
    q_lang = entry.text("q_lang")
    if language != "all" and q_lang != language:
        return None
    answer_type = entry.label("answer_type")
    if answer_type is not None and answer_type.upper() not in ANSWER_TYPES:
        raise entry.error("bad_value", f"answer_type {answer_type.upper()!r} is not CLOSED or OPEN")
    question = entry.text("question")
    answer = entry.text("answer")
    img_name = entry.text("img_name")
    img_id = entry.get("img_id")
    if img_id is not None and (isinstance(img_id, bool) or not isinstance(img_id, int)):
        raise entry.error("bad_field_type", f"field 'img_id' should be an integer, got {img_id!r}")
    location = entry.label("location")
    return SlakeRow(
        id=entry.id, question=question, answer=answer, image=resolve_image(folder, img_name), split=split,
        where=entry.where, q_lang=q_lang, answer_type=answer_type.upper() if answer_type else None,
        content_type=entry.label("content_type"), modality=entry.label("modality"),
        organ=location.lower() if location else None, img_id=img_id,
    )
