"""PMC-VQA, the CSV release: ``Figure_path, Question, Answer, Choice A..D[, Answer_label]``; figures in ``images/``.

| file                                   | split |
|----------------------------------------|-------|
| train.csv, train_2.csv                 | train |
| test.csv, test_2.csv, test_clean.csv   | test  |

The release has no ids: an entry's id is its 0-based data-row index. Choices are written
``"A:Axial"``; the letter prefix is dropped. The gold is ``Answer_label`` where the file has that
column and the row fills it, else ``Answer``; either may be a letter or an option's text, and the
row carries the letter.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from megatron_infimed.datasets.entries import OPTION_LETTERS, Entry, ReleaseRead, ReleaseRow, read_entries
from megatron_infimed.datasets.files import ReleaseFileError, decode_text, image_folder, resolve_image

SPLIT_OF_FILE = {"train.csv": "train", "train_2.csv": "train", "test.csv": "test", "test_2.csv": "test",
                 "test_clean.csv": "test"}
REQUIRED_COLUMNS = ("Figure_path", "Question", "Answer", "Choice A", "Choice B")
_CHOICE_PREFIX = re.compile(r"^\s*[A-H]\s*[:.)]\s*")


@dataclass(frozen=True, kw_only=True, slots=True)
class PmcVqaRow(ReleaseRow):
    options: Mapping[str, str]  # letter -> option text, in order


def read(path: str | Path, *, image_root: str | Path | None = None) -> ReleaseRead[PmcVqaRow]:
    path = Path(path)
    reader = csv.DictReader(io.StringIO(decode_text(path.read_bytes()), newline=""))
    columns = reader.fieldnames or []
    missing = [column for column in REQUIRED_COLUMNS if column not in columns]
    if missing:
        raise ReleaseFileError(f"{path}: missing CSV column(s) {missing}; found {reader.fieldnames}")
    choices = [column for column in (f"Choice {letter}" for letter in OPTION_LETTERS) if column in columns]
    # Each location is built once its row is read, so line_num is that row's last line (cells may span lines).
    located = ((f"{path.name} line {reader.line_num} (row {index})", row) for index, row in enumerate(reader))
    folder = image_folder(path, image_root, "images")
    parse = partial(_row, choices=choices, n_columns=len(columns), split=SPLIT_OF_FILE.get(path.name), folder=folder)
    return read_entries(located, parse, folder)


def _row(entry: Entry, *, choices: list[str], n_columns: int, split: str | None, folder: Path) -> PmcVqaRow:
    entry.read_id(None)
    if entry.get(None) is not None:  # csv puts surplus cells under the key None
        raise entry.error("bad_record", f"more cells than the {n_columns} columns")
    options = {}
    for column in choices:
        text = _CHOICE_PREFIX.sub("", entry.get(column) or "").strip()
        if text:
            options[column[-1]] = text
    question = entry.text("Question")
    gold = entry.label("Answer_label") or entry.text("Answer")
    return PmcVqaRow(
        id=entry.id, question=question, answer=entry.gold_letter(gold, options),
        image=resolve_image(folder, entry.text("Figure_path")), split=split, where=entry.where, options=options,
    )
