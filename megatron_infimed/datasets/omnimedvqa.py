"""OmniMedVQA: one QA JSON list per source dataset (``QA_information/Open-access/*.json``).

An evaluation-only release, so every row's split is ``test``. ``image_path`` is relative to the
OmniMedVQA root folder, not to the JSON file: pass that folder as ``image_root``. Choices are
``option_A`` .. ``option_H`` (at least A and B); ``gt_answer`` is the text of one of them, and the
row carries its letter. An entry's id is its ``question_id``, else its 0-based index.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from megatron_infimed.datasets.entries import OPTION_LETTERS, Entry, ReleaseRead, ReleaseRow, read_json_entries
from megatron_infimed.datasets.files import image_folder, resolve_image

SPLIT = "test"


@dataclass(frozen=True, kw_only=True, slots=True)
class OmniMedVqaRow(ReleaseRow):
    options: Mapping[str, str]  # letter -> option text, in order
    question_type: str | None  # "Modality Recognition", "Disease Diagnosis", ...
    modality: str | None  # the release's ``modality_type``, e.g. "CT(Computed Tomography)"


def read(path: str | Path, *, image_root: str | Path | None = None) -> ReleaseRead[OmniMedVqaRow]:
    folder = image_folder(path, image_root)
    return read_json_entries(Path(path), partial(_row, folder=folder), folder)


def _row(entry: Entry, *, folder: Path) -> OmniMedVqaRow:
    entry.read_id("question_id", optional=True)
    options = {}
    for letter in OPTION_LETTERS:
        text = entry.label(f"option_{letter}")
        if text is not None:
            options[letter] = text
    if len(options) < 2:
        raise entry.error("missing_field", f"expected at least option_A and option_B, got {sorted(options)}")
    gold = entry.text("gt_answer")
    return OmniMedVqaRow(
        id=entry.id, question=entry.text("question"), answer=entry.gold_letter(gold, options),
        image=resolve_image(folder, entry.text("image_path")), split=SPLIT, where=entry.where, options=options,
        question_type=entry.label("question_type"), modality=entry.label("modality_type"),
    )
