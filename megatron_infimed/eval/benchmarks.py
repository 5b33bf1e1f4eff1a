"""Benchmarks: the rows of each release (``megatron_infimed.datasets``) as scored ``Question``s, plus ``jsonl``.

| name        | file                                   | id                          | types          |
|-------------|----------------------------------------|-----------------------------|----------------|
| vqa_rad     | VQA_RAD_Dataset_Public.json            | ``qid``                     | closed / open  |
| slake       | SLAKE test.json (``q_lang`` filter)    | ``qid``                     | closed / open  |
| pathvqa     | JSON list {image, question, answer}    | ``qid``, else 0-based index | closed / open  |
| pmc_vqa     | CSV Figure_path, Question, Choice A..D | 0-based data row index      | choice         |
| omnimedvqa  | JSON list {question, gt_answer, ...}   | ``question_id``, else index | choice         |
| jsonl       | {id, image, question, answer, options?}| ``id``                      | any            |

The releases are parsed by their readers; ``jsonl``, evaluation's own format, is parsed here with
the same field rules. What evaluation adds:

- **Question type**, as MedEvalKit: VQA-RAD, PathVQA and generic JSONL call a question closed when
  its gold answer is exactly "yes" or "no"; SLAKE uses its own ``answer_type`` label, so here it is
  required; PMC-VQA and OmniMedVQA are multiple choice.
- **VQA-RAD is scored on its test split** (the 451 questions published results use) unless
  ``split`` says otherwise.
- **A malformed entry fails the benchmark**, as ``BenchmarkFormatError`` naming the first one and
  how many there are: a score over part of a benchmark is not comparable. So does text that is not
  UTF-8, which the readers keep as lone surrogates.

- **Categories** for ``by_category`` in results.json: the labels the release carries, under the
  release's own field names (``CATEGORY_FIELDS``). A question without a label is left out of that
  field's breakdown only. VQA-RAD's two-type labels ("POS, PRES") stay one category, as labelled.

| name     | category (row attribute)                                                     |
|----------|------------------------------------------------------------------------------|
| vqa_rad  | answer_type, question_type, image_organ (``organ``: head / chest / abdomen)  |
| slake    | modality, location (``organ``, lower case)                                   |
| pathvqa  | answer_type (when the file carries it)                                       |

``load_benchmark`` then checks every image once and marks unusable ones as skipped (see
``questions.py``). Image paths follow the one image-folder rule of ``megatron_infimed.datasets.files``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

from megatron_infimed.datasets import RELEASES, ReleaseFileError, ReleaseRow
from megatron_infimed.datasets.entries import OPTION_LETTERS, Entry, EntryError
from megatron_infimed.datasets.files import image_folder, resolve_image
from megatron_infimed.datasets.omnimedvqa import OmniMedVqaRow
from megatron_infimed.datasets.pmc_vqa import PmcVqaRow
from megatron_infimed.datasets.slake import SlakeRow
from megatron_infimed.eval.questions import Question, image_problem, jsonl_records

# Selection a benchmark is scored on when the caller gives none.
SCORED_SELECTION = {"vqa_rad": {"split": "test"}}


class BenchmarkFormatError(ValueError):
    """A benchmark file that does not have the expected shape."""


def _closed_or_open(answer: str) -> str:
    return "closed" if answer.lower() in ("yes", "no") else "open"


def _typed_by_gold(row: ReleaseRow) -> Question:
    kind = _closed_or_open(row.answer)
    return Question(id=row.id, question=row.question, answer=row.answer, type=kind, image=row.image)


def _typed_by_answer_type(row: SlakeRow) -> Question:
    if row.answer_type is None:
        raise BenchmarkFormatError(f"{row.where}: missing field 'answer_type' (SLAKE's closed/open label)")
    kind = "closed" if row.answer_type == "CLOSED" else "open"
    return Question(id=row.id, question=row.question, answer=row.answer, type=kind, image=row.image)


def _choice(row: PmcVqaRow | OmniMedVqaRow) -> Question:
    return Question(id=row.id, question=row.question, answer=row.answer, type="choice", options=row.options,
                    image=row.image)


# release -> {category name in results.json: row attribute holding it}
CATEGORY_FIELDS: dict[str, dict[str, str]] = {
    "vqa_rad": {"answer_type": "answer_type", "question_type": "question_type", "image_organ": "organ"},
    "slake": {"modality": "modality", "location": "organ"},
    "pathvqa": {"answer_type": "answer_type"},
}


def _categories(name: str, row: ReleaseRow) -> dict[str, str]:
    labels = {category: getattr(row, attribute) for category, attribute in CATEGORY_FIELDS.get(name, {}).items()}
    return {category: label for category, label in labels.items() if label is not None}


# release -> how one of its rows is asked and scored
QUESTION_OF_ROW: dict[str, Callable[[Any], Question]] = {
    "vqa_rad": _typed_by_gold,
    "slake": _typed_by_answer_type,
    "pathvqa": _typed_by_gold,
    "pmc_vqa": _choice,
    "omnimedvqa": _choice,
}


def _not_utf8(question: Question) -> str | None:
    """The first field holding a lone surrogate (a byte of the file that was not UTF-8), else None."""
    fields = {"question": question.question, "answer": question.answer,
              **{f"option {letter}": text for letter, text in question.options.items()}}
    for name, text in fields.items():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            return name
    return None


def _read_release(name: str, path: Path, *, image_root=None, **selection: str) -> list[Question]:
    """Release ``name``'s selected rows as questions; see the module docstring for what fails."""
    try:
        read = RELEASES[name].read(path, image_root=image_root, **{**SCORED_SELECTION.get(name, {}), **selection})
    except ReleaseFileError as err:
        raise BenchmarkFormatError(str(err)) from err
    malformed = read.malformed
    if malformed:
        in_all = f"; {len(malformed)} malformed entries in all" if len(malformed) > 1 else ""
        raise BenchmarkFormatError(malformed[0].detail + in_all)
    questions = []
    for row in read.rows:
        question = replace(QUESTION_OF_ROW[name](row), categories=_categories(name, row))
        bad_field = _not_utf8(question)
        if bad_field:
            raise BenchmarkFormatError(f"{row.where}: {bad_field} is not valid UTF-8 text")
        questions.append(question)
    return questions


def _jsonl_question(entry: Entry, folder: Path) -> Question:
    entry.read_id("id")
    answer = entry.text("answer")
    raw_options = entry.get("options")
    if isinstance(raw_options, list):
        raw_options = dict(zip(OPTION_LETTERS, raw_options))
    if raw_options is not None and not isinstance(raw_options, dict):
        raise entry.error("bad_field_type", f"'options' should be a list or an object, got {raw_options!r}")
    options = {str(k).upper(): entry.check_text(v, f"options[{k}]") for k, v in (raw_options or {}).items()}
    if not set(options) <= set(OPTION_LETTERS):
        raise entry.error("bad_value", f"option keys {sorted(options)} should be letters A-H")
    question = entry.text("question")
    image = None if entry.get("image") is None else resolve_image(folder, entry.text("image"))
    return Question(
        id=entry.id,
        question=question,
        answer=entry.gold_letter(answer, options) if options else answer,
        type="choice" if options else _closed_or_open(answer),
        options=options,
        image=image,
    )


def read_jsonl(path: Path, *, image_root=None) -> list[Question]:
    """Generic JSONL: ``options`` (list or letter->text) makes a choice question; "image" may be null."""
    folder = image_folder(path, image_root)
    questions = []
    for index, (_, where, record) in enumerate(jsonl_records(path, BenchmarkFormatError)):
        try:
            questions.append(_jsonl_question(Entry(record, where, index), folder))
        except EntryError as err:
            raise BenchmarkFormatError(str(err)) from err
    return questions


BENCHMARKS: dict[str, Callable[..., list[Question]]] = {
    **{name: partial(_read_release, name) for name in QUESTION_OF_ROW},
    "jsonl": read_jsonl,
}


def load_benchmark(
    name: str,
    data: str | Path,
    *,
    image_root: str | Path | None = None,
    split: str | None = None,
    language: str | None = None,
    check_images: bool = True,
) -> list[Question]:
    """Read benchmark ``name`` from ``data``, then mark questions whose image is unusable as skipped.

    >>> qs = load_benchmark("vqa_rad", "shared/data/vqa_rad/VQA_RAD_Dataset_Public.json")
    >>> len(qs), sum(q.type == "closed" for q in qs)
    (451, 251)
    """
    if name not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {name!r}; expected one of {sorted(BENCHMARKS)}")
    path = Path(data)
    if not path.is_file():
        raise FileNotFoundError(f"benchmark data file for {name} not found: {path}")
    selection = {key: value for key, value in (("split", split), ("language", language)) if value is not None}
    unsupported = set(selection) - set(RELEASES[name].selection if name in RELEASES else ())
    if unsupported:
        raise ValueError(f"option(s) {sorted(unsupported)} do not apply to benchmark {name!r}")
    questions = BENCHMARKS[name](path, image_root=image_root, **selection)

    seen: set[str] = set()
    for question in questions:
        if question.id in seen:
            raise BenchmarkFormatError(f"{path}: question id {question.id!r} appears more than once")
        seen.add(question.id)
    if check_images:
        problems: dict[Path, str | None] = {}  # questions share images: decode each file once
        for q in questions:
            if q.image is not None and q.image not in problems:
                problems[q.image] = image_problem(q.image)
        questions = [replace(q, skip_reason=problems[q.image]) if q.image is not None else q for q in questions]
    return questions
