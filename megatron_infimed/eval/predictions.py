"""Reading a predictions file: JSONL lines ``{"id": ..., "prediction": "..."}``, checked strictly.

The id is the benchmark's own question id; ``0`` and ``"0"`` are the same id because question ids
are strings (see ``questions.py``). Strict, because a silently ignored line changes a score:

| input                                  | outcome                                       |
|----------------------------------------|-----------------------------------------------|
| line that is not a JSON object         | PredictionsError naming the line              |
| id not in the benchmark                | PredictionsError naming the id and the line   |
| id given twice                         | PredictionsError naming the id and both lines |
| ``"prediction": null``                 | no prediction: the question counts as wrong   |
| question without a line                | no prediction: the question counts as wrong   |

Blank lines are allowed; keys other than ``id`` and ``prediction`` are ignored, so a
``predictions.jsonl`` written by ``infimed-eval run`` can be scored again.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

from megatron_infimed.eval.questions import jsonl_records


class PredictionsError(ValueError):
    """A predictions file that cannot be matched to the benchmark."""


def read_predictions(path: str | Path, question_ids: Iterable[str]) -> dict[str, str | None]:
    """Map question id -> prediction text (None for an explicit null) for every line of ``path``."""
    path = Path(path)
    known = set(question_ids)
    predictions: dict[str, str | None] = {}
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
        predictions[question_id] = prediction
        first_line[question_id] = line_number
    return predictions
