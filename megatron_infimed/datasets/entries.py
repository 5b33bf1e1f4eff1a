"""One entry of a release file -> a typed row, or a ``Malformed`` report saying what was wrong.

A release module writes one ``parse(entry)`` function: it reads fields through ``Entry`` (which
raises ``EntryError`` naming the file, the entry, its id once read, and the field) and returns a
row, or None when the caller's selection (split, language) leaves the entry out. ``read_entries``
runs it over the file and keeps everything in file order:

    [row, row, Malformed("VQA_RAD.json record 2 (qid 5): missing field 'question'"), row, …], excluded=n

An entry is located by the file's name and its position, not its full path, so the same data
gives the same messages, curation keys and reports wherever it sits. A whole-file error
(``ReleaseFileError``) gives the path as the caller spelled it.

Field rules, the same for every release:

| field     | accepted                                                 | otherwise (``Malformed.kind``) |
|-----------|----------------------------------------------------------|--------------------------------|
| the entry | a JSON object (a CSV row is one)                         | bad_record                     |
| id        | string or integer, kept as a string ("0" == 0)           | missing_field, bad_field_type  |
| text      | string or number (VQA-RAD's integer answers), stripped, not empty | missing_field, bad_field_type |
| label     | as text, but absent, null or blank is None               | bad_field_type                 |
| any       | a value the release allows (phrase_type, gold option...) | bad_value                      |
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, TypeVar

from megatron_infimed.datasets.files import load_json_list

OPTION_LETTERS = "ABCDEFGH"


@dataclass(frozen=True, kw_only=True, slots=True)
class ReleaseRow:
    """What a row of every release has; each release's row adds its own labels."""

    id: str  # the release's own id as a string (VQA-RAD's "0" and 0 are the same question)
    question: str
    answer: str  # for a multiple-choice release: the gold option's letter
    image: Path
    split: str | None  # "train" | "validation" | "test" by the release's table; None: a file it does not name
    where: str  # "VQA_RAD.json record 3 (qid 5)": names the entry in messages


@dataclass(frozen=True, slots=True)
class Malformed:
    """An entry that could not become a row."""

    id: str | None  # the release's id, when the entry had a readable one
    kind: str  # "bad_record" | "missing_field" | "bad_field_type" | "bad_value"
    detail: str  # "VQA_RAD.json record 3 (qid 5): missing field 'question'"
    where: str  # "VQA_RAD.json record 3"


R = TypeVar("R", bound=ReleaseRow)


@dataclass(frozen=True, slots=True)
class ReleaseRead(Generic[R]):
    """Every selected entry, in file order, plus how many the selection left out."""

    entries: list[R | Malformed]
    excluded: int  # entries the selection (split, language) left out; never malformed ones
    image_folder: Path  # the folder image names were resolved against

    @property
    def rows(self) -> list[R]:
        return [e for e in self.entries if not isinstance(e, Malformed)]

    @property
    def malformed(self) -> list[Malformed]:
        return [e for e in self.entries if isinstance(e, Malformed)]


class EntryError(Exception):
    def __init__(self, kind: str, detail: str):
        super().__init__(detail)
        self.kind = kind


class Entry:
    """One entry being parsed: its fields, where it sits, and (once read) its id for messages."""

    def __init__(self, value: object, location: str, index: int):
        self.value = value
        self.location = location  # "VQA_RAD.json record 3", "test.csv line 4 (row 2)"
        self.index = index  # 0-based position among the file's entries
        self.id: str | None = None
        self._id_field: str | None = None

    @property
    def where(self) -> str:
        return f"{self.location} ({self._id_field} {self.id})" if self._id_field else self.location

    def error(self, kind: str, what: str) -> EntryError:
        return EntryError(kind, f"{self.where}: {what}")

    def get(self, key: str | None) -> object:
        """The raw value of ``key``, None when absent."""
        if not isinstance(self.value, dict):
            raise self.error("bad_record", f"expected a JSON object, got {type(self.value).__name__}")
        return self.value.get(key)

    def read_id(self, key: str | None, *, optional: bool = False) -> str:
        """The id in field ``key``, and from here on in every message about the entry.

        The entry's index stands in when ``key`` is None (a release without ids) or an ``optional``
        key is absent; messages then need no id, since ``location`` names the index.
        """
        value = None if key is None else self.get(key)
        if value is None and (key is None or optional):
            self.id = str(self.index)
            return self.id
        if value is None:
            raise self.error("missing_field", f"missing field {key!r}")
        if isinstance(value, bool) or not isinstance(value, (str, int)):
            raise self.error("bad_field_type", f"id field {key!r} should be a string or integer, got {value!r}")
        if not str(value).strip():
            raise self.error("missing_field", f"id field {key!r} is empty")
        self.id, self._id_field = str(value).strip(), key
        return self.id

    def text(self, key: str) -> str:
        value = self.get(key)
        if value is None:
            raise self.error("missing_field", f"missing field {key!r}")
        return self.check_text(value, key)

    def label(self, key: str) -> str | None:
        """An optional label such as ``answer_type``: absent, null or blank is None."""
        value = self.get(key)
        if value is None or (isinstance(value, str) and not value.strip()):
            return None
        return self.check_text(value, key)

    def check_text(self, value: object, name: str) -> str:
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise self.error("bad_field_type", f"field {name!r} should be text, got {value!r}")
        text = str(value).strip()
        if not text:
            raise self.error("missing_field", f"field {name!r} is empty")
        return text

    def gold_letter(self, gold: str, options: Mapping[str, str]) -> str:
        """The gold option's letter, given the letter itself or the option's text (any case)."""
        if len(gold) == 1 and gold.upper() in options:
            return gold.upper()
        matches = [letter for letter, text in options.items() if text.strip().lower() == gold.strip().lower()]
        if len(matches) != 1:
            raise self.error("bad_value", f"gold answer {gold!r} matches {len(matches)} of the options {dict(options)}")
        return matches[0]


def read_entries(
    located: Iterable[tuple[str, object]], parse: Callable[[Entry], R | None], image_folder: Path
) -> ReleaseRead[R]:
    """Run ``parse`` over ``(location, value)`` pairs; see the module docstring."""
    entries: list[R | Malformed] = []
    excluded = 0
    for index, (location, value) in enumerate(located):
        entry = Entry(value, location, index)
        try:
            row = parse(entry)
        except EntryError as problem:
            entries.append(Malformed(entry.id, problem.kind, str(problem), location))
            continue
        if row is None:
            excluded += 1
        else:
            entries.append(row)
    return ReleaseRead(entries, excluded, image_folder)


def read_json_entries(path: Path, parse: Callable[[Entry], R | None], image_folder: Path) -> ReleaseRead[R]:
    """``read_entries`` over a JSON list file; entry ``i`` is located as ``NAME record i``."""
    located = ((f"{path.name} record {index}", value) for index, value in enumerate(load_json_list(path)))
    return read_entries(located, parse, image_folder)
