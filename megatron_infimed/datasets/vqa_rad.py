"""VQA-RAD, the official release file ``VQA_RAD_Dataset_Public.json``: 2,248 entries, images in ``images/``.

One file holds every split; ``phrase_type`` decides, by the community's table (the one the widely
used Hugging Face export follows):

| phrase_type               | split | in the release  |
|---------------------------|-------|-----------------|
| test_freeform, test_para  | test  | 451 (308 + 143) |
| freeform, para            | train | 1,797           |

An entry with another or no ``phrase_type`` cannot be placed, so it is reported as malformed
whatever split is asked for, rather than guessed into one. ``split`` has no default: curation
prepares ``train`` and evaluation scores ``test``, each saying so where it calls this reader; a
default here would silently hand one of them the other's questions.

Quirks read, not edited away: one ``qid`` is the string "0" (ids are strings, so "0" and 0 are the
same question); ``answer_type`` "CLOSED " has a trailing space (stripped); five answers are integers
(read as text).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path

from megatron_infimed.datasets.entries import Entry, ReleaseRead, ReleaseRow, read_json_entries
from megatron_infimed.datasets.files import image_folder, resolve_image

SPLIT_OF_PHRASE_TYPE = {"freeform": "train", "para": "train", "test_freeform": "test", "test_para": "test"}
SPLITS = ("train", "test", "all")
ORGANS = {"HEAD": "head", "CHEST": "chest", "ABD": "abdomen"}  # the release's image_organ -> organ


@dataclass(frozen=True, kw_only=True, slots=True)
class VqaRadRow(ReleaseRow):
    phrase_type: str
    image_name: str  # as the release names it; ``image`` is the resolved path
    answer_type: str | None  # "CLOSED" / "OPEN" as labelled (evaluation types by the gold answer instead)
    question_type: str | None  # "PRES", "POS", ...; "POS, PRES" for two
    organ: str | None  # "head" | "chest" | "abdomen"


def read(path: str | Path, *, split: str, image_root: str | Path | None = None) -> ReleaseRead[VqaRadRow]:
    """The entries of ``split`` ("train", "test" or "all"); the others are counted as excluded."""
    if split not in SPLITS:
        raise ValueError(f"vqa_rad split {split!r} is not one of {sorted(SPLITS)}")
    folder = image_folder(path, image_root, "images")
    return read_json_entries(Path(path), partial(_row, split=split, folder=folder), folder)


def _row(entry: Entry, *, split: str, folder: Path) -> VqaRadRow | None:
    entry.read_id("qid")
    phrase_type = entry.text("phrase_type")
    if phrase_type not in SPLIT_OF_PHRASE_TYPE:
        expected = sorted(SPLIT_OF_PHRASE_TYPE)
        raise entry.error("bad_value", f"unknown phrase_type {phrase_type!r}; expected one of {expected}")
    row_split = SPLIT_OF_PHRASE_TYPE[phrase_type]
    if split != "all" and row_split != split:
        return None
    answer = entry.text("answer")
    question = entry.text("question")
    image_name = entry.text("image_name")
    organ = entry.label("image_organ")
    answer_type = entry.label("answer_type")
    return VqaRadRow(
        id=entry.id, question=question, answer=answer, image=resolve_image(folder, image_name), split=row_split,
        where=entry.where, phrase_type=phrase_type, image_name=image_name,
        answer_type=answer_type.upper() if answer_type else None,
        question_type=entry.label("question_type"),
        organ=ORGANS.get(organ.upper(), organ.lower()) if organ else None,
    )
