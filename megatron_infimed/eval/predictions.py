"""Reading a predictions file: JSONL lines ``{"id": ..., "prediction": "..."}``, checked strictly.

The id is the benchmark's own question id; ``0`` and ``"0"`` are the same id because question ids
are strings (see ``questions.py``). Strict, because a silently ignored line changes a score:

| input                                        | outcome                                       |
|----------------------------------------------|-----------------------------------------------|
| line that is not a JSON object               | PredictionsError naming the line              |
| bytes that are not UTF-8                     | PredictionsError naming the line              |
| no line at all (empty file)                  | PredictionsError naming the file              |
| id not in the benchmark                      | PredictionsError naming the id and the line   |
| id given twice                               | PredictionsError naming the id and both lines |
| ``"prediction": null``                       | no prediction: the question counts as wrong   |
| question without a line                      | no prediction: the question counts as wrong   |
| ``"skipped": REASON``, ``"prediction": null``| skipped, as by the run that wrote the line    |
| ``"skipped"`` with a prediction or unknown   | PredictionsError naming the line              |

Blank lines are allowed; other keys are ignored, so a ``predictions.jsonl`` written by
``infimed-eval run`` can be scored again, with the same results, without its images.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from megatron_infimed.eval.questions import IMAGE_MISSING, IMAGE_UNREADABLE, jsonl_records

SKIP_REASONS = (IMAGE_MISSING, IMAGE_UNREADABLE)


class PredictionsError(ValueError):
    """A predictions file that cannot be matched to the benchmark."""


@dataclass(frozen=True, slots=True)
class Predictions:
    answers: dict[str, str | None]  # question id -> prediction text (None for an explicit null)
    skipped: dict[str, str]  # question id -> skip reason, for lines a run wrote for questions it skipped


def read_predictions(path: str | Path, question_ids: Iterable[str]) -> Predictions:
    """The predictions and skip reasons of every line of ``path``, checked against ``question_ids``."""
    path = Path(path)
    known = set(question_ids)
    predictions: dict[str, str | None] = {}
    skipped: dict[str, str] = {}
    first_line: dict[str, int] = {}
    for line_number, where, record in jsonl_records(path, PredictionsError):
        if not isinstance(record, dict) or "id" not in record or "prediction" not in record:
            raise PredictionsError(
                f'{where}: expected an object with "id" and "prediction", got {json.dumps(record)[:120]}'
            )
        raw_id, prediction = record["id"], record["prediction"]
        if isinstance(raw_id, bool) or not isinstance(raw_id, (str, int)):
            raise PredictionsError(f"{where}: id should be a string or integer, got {raw_id!r}")
        if prediction is not None and not isinstance(prediction, str):
            raise PredictionsError(
                f"{where} (id {raw_id}): prediction should be a string or null, got {prediction!r}"
            )
        question_id = str(raw_id).strip()
        if question_id not in known:
            raise PredictionsError(f"{where}: id {question_id!r} is not a question of this benchmark")
        if question_id in predictions:
            raise PredictionsError(
                f"{where}: id {question_id!r} was already given on line {first_line[question_id]}"
            )
        reason = record.get("skipped")
        if reason is not None:
            if reason not in SKIP_REASONS:
                raise PredictionsError(f"{where} (id {raw_id}): skipped should be one of {SKIP_REASONS} or null, "
                                       f"got {reason!r}")
            if prediction is not None:
                raise PredictionsError(f"{where} (id {raw_id}): a skipped question has no prediction, got "
                                       f"{prediction[:80]!r} with skipped {reason!r}")
            skipped[question_id] = reason
        predictions[question_id] = prediction
        first_line[question_id] = line_number
    if not first_line:
        raise PredictionsError(f"{path} holds no predictions: expected one JSON line "
                               f'{{"id": ..., "prediction": ...}} per question')
    return Predictions(predictions, skipped)
