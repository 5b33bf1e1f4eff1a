"""``Question``: one benchmark item, the unit every reader yields and every scorer consumes.

A question carries its benchmark's own id as a string (VQA-RAD mixes the string ``"0"`` with
integer qids; ``str()`` makes ``0`` and ``"0"`` the same question), the gold answer, and one of
three types that pick the scoring rule:

| type     | gold                         | rule (see ``scoring.py``)                           |
|----------|------------------------------|-----------------------------------------------------|
| closed   | "yes"/"no" (or SLAKE CLOSED) | exactly one of the words yes/no, and it is the gold |
| open     | free text                    | normalised exact match + token-set recall/prec./F1  |
| choice   | an option letter, e.g. "B"   | extracted letter (or option text) equals the gold    |

``categories`` holds the release's own labels that results break accuracy down by
(``by_category`` in results.json); which labels each release has is ``benchmarks.CATEGORY_FIELDS``.

Images are checked once, when a benchmark is loaded: a question whose image is missing or cannot
be decoded keeps its place in the list with ``skip_reason`` set, so it is counted as skipped and
never scored, rather than silently disappearing.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from PIL import Image

QuestionType = Literal["closed", "open", "choice"]
QUESTION_TYPES: tuple[str, ...] = ("closed", "open", "choice")

# Categorical skip reasons: these are the keys of results.json's ``skipped`` counts.
IMAGE_MISSING = "image_missing"
IMAGE_UNREADABLE = "image_unreadable"


@dataclass(frozen=True, kw_only=True, slots=True)
class Question:
    id: str
    question: str
    answer: str  # for "choice": the gold option letter; its text is options[answer]
    type: QuestionType
    options: Mapping[str, str] = field(default_factory=dict)  # letter -> option text, in order
    image: Path | None = None  # None: a text-only question
    skip_reason: str | None = None  # IMAGE_MISSING / IMAGE_UNREADABLE, or None when scorable
    categories: Mapping[str, str] = field(default_factory=dict)  # {"image_organ": "chest", ...}: by_category

    def __post_init__(self) -> None:
        if self.type not in QUESTION_TYPES:
            raise ValueError(f"question {self.id}: type {self.type!r} is not one of {QUESTION_TYPES}")
        if self.type == "choice" and self.answer not in self.options:
            raise ValueError(
                f"question {self.id}: gold option {self.answer!r} is not among options {sorted(self.options)}"
            )


def image_problem(path: Path) -> str | None:
    """Why ``path`` cannot be used as the question's image, or None when it decodes.

    A full decode (``load``), not only ``verify``: a truncated JPEG passes the header check but
    would fail later inside generation.
    """
    if not path.is_file():
        return IMAGE_MISSING
    try:
        with Image.open(path) as image:
            image.load()
    # PIL reports corrupt data through several exception types (OSError, SyntaxError,
    # struct.error, ValueError); any of them means the same thing here.
    except Exception:  # noqa: BLE001
        return IMAGE_UNREADABLE
    return None


def jsonl_records(path: Path, error: type[Exception]) -> Iterator[tuple[int, str, object]]:
    """(line number, "PATH line N", parsed value) per non-blank line; bad JSON or bytes that are not
    UTF-8 raise ``error`` naming the line."""
    # Read as bytes and decode line by line: a text-mode read fails on the first bad byte without
    # saying which line holds it.
    with Path(path).open("rb") as handle:
        for line_number, raw in enumerate(handle, start=1):
            where = f"{path} line {line_number}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise error(f"{where}: not UTF-8 text (byte 0x{raw[err.start]:02x} at column {err.start + 1})") from err
            if not line.strip():
                continue
            try:
                yield line_number, where, json.loads(line)
            except json.JSONDecodeError as err:
                raise error(f"{where}: not valid JSON ({err.msg})") from err
