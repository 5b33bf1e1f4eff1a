"""From per-question scores to the three files of an evaluation run.

``DIR/predictions.jsonl``: one line per question, in benchmark order: ``id, question, answer,
prediction, type, correct, skipped`` (+ ``token_f1`` for open, ``extracted`` letter for choice).
``DIR/results.json``: the aggregate below, every key always present, a metric ``null`` when it
has no question to average over. ``DIR/results.md``: the same numbers as a table, in percent.

Metrics are fractions in [0, 1] averaged over *scored* questions, i.e. ``n_total - n_skipped``
(a question with no prediction is scored, as wrong):

    closed_accuracy      = closed correct / n_closed
    open_exact_match     = open exact matches / n_open
    open_token_recall    = mean over open questions of |pred ∩ gold| / |gold|   (token sets)
    open_token_precision = mean over open questions of |pred ∩ gold| / |pred|
    open_token_f1        = mean over open questions of the per-question F1
    accuracy             = choice correct / n_choice                 (multiple-choice benchmarks)
    overall              = (closed correct + open exact + choice correct) / (n_total - n_skipped)
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from megatron_infimed.eval.questions import Question
from megatron_infimed.eval.scoring import score_question


@dataclass(frozen=True, kw_only=True, slots=True)
class Evaluation:
    records: list[dict[str, Any]]  # the lines of predictions.jsonl
    results: dict[str, Any]  # results.json


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def evaluate(
    questions: Sequence[Question], predictions: Mapping[str, str | None], *, benchmark: str | None = None
) -> Evaluation:
    """Score every non-skipped question; ids missing from ``predictions`` count as wrong."""
    records = []
    correct: dict[str, list[bool]] = {"closed": [], "open": [], "choice": []}
    recall, precision, f1 = [], [], []
    skipped: Counter[str] = Counter()
    missing = 0
    for question in questions:
        prediction = predictions.get(question.id)
        record = {
            "id": question.id,
            "question": question.question,
            "answer": question.answer,
            "prediction": prediction,
            "type": question.type,
            "correct": None,
            "skipped": question.skip_reason,
        }
        records.append(record)
        if question.skip_reason is not None:
            skipped[question.skip_reason] += 1
            continue
        missing += prediction is None
        score = score_question(question, prediction)
        record["correct"] = score.correct
        correct[question.type].append(score.correct)
        if score.overlap is not None:
            recall.append(score.overlap.recall)
            precision.append(score.overlap.precision)
            f1.append(score.overlap.f1)
            record["token_f1"] = score.overlap.f1
        if question.type == "choice":
            record["extracted"] = score.extracted

    scored = [ok for oks in correct.values() for ok in oks]
    results = {
        "benchmark": benchmark,
        "closed_accuracy": _mean(correct["closed"]),
        "open_exact_match": _mean(correct["open"]),
        "open_token_recall": _mean(recall),
        "open_token_precision": _mean(precision),
        "open_token_f1": _mean(f1),
        "accuracy": _mean(correct["choice"]),
        "overall": _mean(scored),
        "n_closed": len(correct["closed"]),
        "n_open": len(correct["open"]),
        "n_choice": len(correct["choice"]),
        "n_total": len(questions),
        "n_skipped": sum(skipped.values()),
        "n_missing_predictions": missing,
        "skipped": dict(sorted(skipped.items())),
    }
    return Evaluation(records=records, results=results)


_MARKDOWN_ROWS = [
    ("overall", "Overall (closed correct + open exact + choice correct) / scored"),
    ("closed_accuracy", "Closed accuracy (yes/no rule)"),
    ("open_exact_match", "Open exact match"),
    ("open_token_recall", "Open token recall"),
    ("open_token_precision", "Open token precision"),
    ("open_token_f1", "Open token F1"),
    ("accuracy", "Multiple-choice accuracy"),
]


def results_markdown(results: Mapping[str, Any]) -> str:
    """A readable table: metrics in percent ("-" when not applicable), then the counts."""
    title = results.get("benchmark") or "benchmark"
    lines = [f"# Evaluation: {title}", "", "| metric | value |", "|---|---|"]
    for key, label in _MARKDOWN_ROWS:
        value = results[key]
        lines.append(f"| {label} | {'-' if value is None else f'{100 * value:.2f} %'} |")
    lines += ["", "| count | value |", "|---|---|"]
    for key in ("n_total", "n_closed", "n_open", "n_choice", "n_skipped", "n_missing_predictions"):
        lines.append(f"| {key} | {results[key]} |")
    for reason, count in results["skipped"].items():
        lines.append(f"| skipped: {reason} | {count} |")
    return "\n".join(lines) + "\n"


def write_report(output_dir: str | Path, evaluation: Evaluation) -> Path:
    """Write predictions.jsonl, results.json and results.md into ``output_dir`` (created)."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    with (output_dir / "predictions.jsonl").open("w", encoding="utf-8") as handle:
        for record in evaluation.records:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    (output_dir / "results.json").write_text(json.dumps(evaluation.results, indent=2) + "\n", encoding="utf-8")
    (output_dir / "results.md").write_text(results_markdown(evaluation.results), encoding="utf-8")
    return output_dir
