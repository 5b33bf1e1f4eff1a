"""Benchmark readers: one function per release format, each turning a file into ``Question``s.

| name        | file                                   | id                          | types          |
|-------------|----------------------------------------|-----------------------------|----------------|
| vqa_rad     | VQA_RAD_Dataset_Public.json            | ``qid``                     | closed / open  |
| slake       | SLAKE test.json (``q_lang`` filter)    | ``qid``                     | closed / open  |
| pathvqa     | JSON list {image, question, answer}    | ``qid``, else 0-based index | closed / open  |
| pmc_vqa     | CSV Figure_path, Question, Choice A..D | 0-based data row index      | choice         |
| omnimedvqa  | JSON list {question, gt_answer, ...}   | ``question_id``, else index | choice         |
| jsonl       | {id, image, question, answer, options?}| ``id``                      | any            |

Readers only parse; ``load_benchmark`` then checks every image once and marks unusable ones as
skipped (see ``questions.py``). The closed/open split follows MedEvalKit: VQA-RAD, PathVQA and
generic JSONL call a question closed when its gold answer is exactly "yes" or "no"; SLAKE uses its
own ``answer_type`` label. Image paths are relative to ``image_root`` when given, otherwise to the
data file's folder (or its ``images/``/``imgs/`` subfolder for the releases that ship one).

A malformed file raises ``BenchmarkFormatError`` naming the file, the record or line, and the field.
"""

from __future__ import annotations

import csv
import json
import re
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

from megatron_infimed.curation.formats import VQA_RAD_SPLITS
from megatron_infimed.eval.questions import Question, image_problem, jsonl_records

OPTION_LETTERS = "ABCDEFGH"


class BenchmarkFormatError(ValueError):
    """A benchmark file that does not have the expected shape."""


# --- field helpers -------------------------------------------------------------------------------


def _field(record: Any, key: str, where: str) -> Any:
    if not isinstance(record, dict):
        raise BenchmarkFormatError(f"{where}: expected a JSON object, got {type(record).__name__}")
    if key not in record or record[key] is None:
        raise BenchmarkFormatError(f"{where}: missing field {key!r}")
    return record[key]


def _text(value: Any, key: str, where: str) -> str:
    """A text field; numbers are accepted (VQA-RAD has integer answers) and become strings."""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise BenchmarkFormatError(f"{where}: field {key!r} should be text, got {value!r}")
    text = str(value).strip()
    if not text:
        raise BenchmarkFormatError(f"{where}: field {key!r} is empty")
    return text


def _id(value: Any, key: str, where: str) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise BenchmarkFormatError(f"{where}: id field {key!r} should be a string or integer, got {value!r}")
    return str(value).strip()


def _load_json_list(path: Path) -> list:
    try:
        records = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise BenchmarkFormatError(f"{path}: not valid JSON (line {err.lineno}: {err.msg})") from err
    if not isinstance(records, list):
        raise BenchmarkFormatError(f"{path}: expected a JSON list of records, got {type(records).__name__}")
    return records


def _image_base(path: Path, image_root: str | Path | None, release_subdir: str | None = None) -> Path:
    if image_root is not None:
        return Path(image_root)
    if release_subdir and (path.parent / release_subdir).is_dir():
        return path.parent / release_subdir
    return path.parent


def _closed_or_open(answer: str) -> str:
    return "closed" if answer.lower() in ("yes", "no") else "open"


def _gold_letter(gold: str, options: dict[str, str], where: str) -> str:
    """The gold option letter, given either the letter itself or the option's text."""
    if gold.upper() in options and len(gold) == 1:
        return gold.upper()
    matches = [letter for letter, text in options.items() if text.strip().lower() == gold.strip().lower()]
    if len(matches) != 1:
        raise BenchmarkFormatError(f"{where}: gold answer {gold!r} matches {len(matches)} of the options {options}")
    return matches[0]


# --- readers -------------------------------------------------------------------------------------


def read_vqa_rad(path: Path, *, image_root=None, split: str = "test") -> list[Question]:
    """The official VQA-RAD release; ``split`` selects by ``phrase_type`` (test = 451 questions)."""
    if split not in VQA_RAD_SPLITS:
        raise ValueError(f"vqa_rad split {split!r} is not one of {sorted(VQA_RAD_SPLITS)}")
    base = _image_base(path, image_root, "images")
    questions = []
    for index, record in enumerate(_load_json_list(path)):
        where = f"{path} record {index}"
        qid = _id(_field(record, "qid", where), "qid", where)
        where = f"{path} record {index} (qid {qid})"
        phrase_type = _text(_field(record, "phrase_type", where), "phrase_type", where)
        if phrase_type not in VQA_RAD_SPLITS["all"]:
            raise BenchmarkFormatError(f"{where}: unknown phrase_type {phrase_type!r}")
        if phrase_type not in VQA_RAD_SPLITS[split]:
            continue
        answer = _text(_field(record, "answer", where), "answer", where)
        questions.append(
            Question(
                id=qid,
                question=_text(_field(record, "question", where), "question", where),
                answer=answer,
                type=_closed_or_open(answer),
                image=base / _text(_field(record, "image_name", where), "image_name", where),
            )
        )
    return questions


def read_slake(path: Path, *, image_root=None, language: str = "en") -> list[Question]:
    """A SLAKE split file; only questions whose ``q_lang`` is ``language`` ("all" keeps every one)."""
    base = _image_base(path, image_root, "imgs")
    questions = []
    for index, record in enumerate(_load_json_list(path)):
        where = f"{path} record {index}"
        qid = _id(_field(record, "qid", where), "qid", where)
        where = f"{path} record {index} (qid {qid})"
        if language != "all" and _text(_field(record, "q_lang", where), "q_lang", where) != language:
            continue
        answer_type = _text(_field(record, "answer_type", where), "answer_type", where).upper()
        if answer_type not in ("CLOSED", "OPEN"):
            raise BenchmarkFormatError(f"{where}: answer_type {answer_type!r} is not CLOSED or OPEN")
        questions.append(
            Question(
                id=qid,
                question=_text(_field(record, "question", where), "question", where),
                answer=_text(_field(record, "answer", where), "answer", where),
                type="closed" if answer_type == "CLOSED" else "open",
                image=base / _text(_field(record, "img_name", where), "img_name", where),
            )
        )
    return questions


def read_pathvqa(path: Path, *, image_root=None) -> list[Question]:
    """PathVQA as a JSON list; the id is the record's ``qid`` when present, else its 0-based index."""
    base = _image_base(path, image_root)
    questions = []
    for index, record in enumerate(_load_json_list(path)):
        where = f"{path} record {index}"
        has_id = isinstance(record, dict) and record.get("qid") is not None
        qid = _id(record["qid"], "qid", where) if has_id else str(index)
        answer = _text(_field(record, "answer", where), "answer", where)
        questions.append(
            Question(
                id=qid,
                question=_text(_field(record, "question", where), "question", where),
                answer=answer,
                type=_closed_or_open(answer),
                image=base / _text(_field(record, "image", where), "image", where),
            )
        )
    return questions


_CHOICE_PREFIX = re.compile(r"^\s*[A-H]\s*[:.)]\s*")  # PMC-VQA writes choices as "A:Axial"


def read_pmc_vqa(path: Path, *, image_root=None) -> list[Question]:
    """PMC-VQA CSV; the gold is ``Answer_label`` when present, else ``Answer`` (letter or option text)."""
    base = _image_base(path, image_root, "images")
    required = ["Figure_path", "Question", "Answer", "Choice A", "Choice B"]
    questions = []
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        missing = [column for column in required if column not in (reader.fieldnames or [])]
        if missing:
            raise BenchmarkFormatError(f"{path}: missing CSV column(s) {missing}; found {reader.fieldnames}")
        choice_columns = [c for c in (f"Choice {letter}" for letter in OPTION_LETTERS) if c in reader.fieldnames]
        for index, row in enumerate(reader):
            where = f"{path} line {reader.line_num} (row {index})"
            if None in row:  # csv puts surplus cells under the key None
                raise BenchmarkFormatError(f"{where}: more cells than the {len(reader.fieldnames)} columns")
            options = {}
            for column in choice_columns:
                text = _CHOICE_PREFIX.sub("", row[column] or "").strip()
                if text:
                    options[column[-1]] = text
            gold = row.get("Answer_label") or row["Answer"]
            questions.append(
                Question(
                    id=str(index),
                    question=_text(row["Question"], "Question", where),
                    answer=_gold_letter(_text(gold, "Answer", where), options, where),
                    type="choice",
                    options=options,
                    image=base / _text(row["Figure_path"], "Figure_path", where),
                )
            )
    return questions


def read_omnimedvqa(path: Path, *, image_root=None) -> list[Question]:
    """An OmniMedVQA QA file: ``option_A``.. hold the choices and ``gt_answer`` the gold option text."""
    base = _image_base(path, image_root)
    questions = []
    for index, record in enumerate(_load_json_list(path)):
        where = f"{path} record {index}"
        has_id = isinstance(record, dict) and record.get("question_id") is not None
        qid = _id(record["question_id"], "question_id", where) if has_id else str(index)
        options = {
            letter: str(record[f"option_{letter}"]).strip()
            for letter in OPTION_LETTERS
            if isinstance(record, dict) and str(record.get(f"option_{letter}") or "").strip()
        }
        if len(options) < 2:
            raise BenchmarkFormatError(f"{where}: expected at least option_A and option_B, got {sorted(options)}")
        gold = _text(_field(record, "gt_answer", where), "gt_answer", where)
        questions.append(
            Question(
                id=qid,
                question=_text(_field(record, "question", where), "question", where),
                answer=_gold_letter(gold, options, where),
                type="choice",
                options=options,
                image=base / _text(_field(record, "image_path", where), "image_path", where),
            )
        )
    return questions


def read_jsonl(path: Path, *, image_root=None) -> list[Question]:
    """Generic JSONL: ``options`` (list or letter->text) makes a choice question; "image" may be null."""
    base = _image_base(path, image_root)
    questions = []
    for line_number, where, record in jsonl_records(path, BenchmarkFormatError):
        qid = _id(_field(record, "id", where), "id", where)
        where = f"{path} line {line_number} (id {qid})"
        answer = _text(_field(record, "answer", where), "answer", where)
        raw_options = record.get("options")
        if isinstance(raw_options, list):
            raw_options = dict(zip(OPTION_LETTERS, raw_options))
        if raw_options is not None and not isinstance(raw_options, dict):
            raise BenchmarkFormatError(f"{where}: 'options' should be a list or an object, got {raw_options!r}")
        options = {str(k).upper(): _text(v, f"options[{k}]", where) for k, v in (raw_options or {}).items()}
        if not set(options) <= set(OPTION_LETTERS):
            raise BenchmarkFormatError(f"{where}: option keys {sorted(options)} should be letters A-H")
        image = record.get("image")
        questions.append(
            Question(
                id=qid,
                question=_text(_field(record, "question", where), "question", where),
                answer=_gold_letter(answer, options, where) if options else answer,
                type="choice" if options else _closed_or_open(answer),
                options=options,
                image=None if image is None else base / _text(image, "image", where),
            )
        )
    return questions


BENCHMARKS: dict[str, Callable[..., list[Question]]] = {
    "vqa_rad": read_vqa_rad,
    "slake": read_slake,
    "pathvqa": read_pathvqa,
    "pmc_vqa": read_pmc_vqa,
    "omnimedvqa": read_omnimedvqa,
    "jsonl": read_jsonl,
}
# Reader options that only some formats have; passing one to another format is an error.
_READER_OPTIONS = {"vqa_rad": {"split"}, "slake": {"language"}}


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
    options = {key: value for key, value in (("split", split), ("language", language)) if value is not None}
    unsupported = set(options) - _READER_OPTIONS.get(name, set())
    if unsupported:
        raise ValueError(f"option(s) {sorted(unsupported)} do not apply to benchmark {name!r}")
    questions = BENCHMARKS[name](path, image_root=image_root, **options)

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
