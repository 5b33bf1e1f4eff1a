"""From per-question scores to the three files of an evaluation run.

``DIR/predictions.jsonl``: one line per question, in benchmark order: ``id, question, answer,
prediction, type, correct, skipped`` (+ ``token_f1`` for open, ``extracted`` letter for choice).
``DIR/results.json``: the aggregate below, every key but ``ci95`` always present, a metric
``null`` when it has no question to average over. ``DIR/results.md``: the same numbers as tables,
in percent, with their intervals and the accuracy by category.

Metrics are fractions in [0, 1] averaged over *scored* questions, i.e. ``n_total - n_skipped``
(a question with no prediction is scored, as wrong):

    closed_accuracy      = closed correct / n_closed
    open_exact_match     = open exact matches / n_open
    open_token_recall    = mean over open questions of |pred ∩ gold| / |gold|   (token sets)
    open_token_precision = mean over open questions of |pred ∩ gold| / |pred|
    open_token_f1        = mean over open questions of the per-question F1
    accuracy             = choice correct / n_choice                 (multiple-choice benchmarks)
    overall              = (closed correct + open exact + choice correct) / (n_total - n_skipped)

``ScoringConfig`` picks the per-question rules (``scoring`` in results.json: "strict", the
default, or "medevalkit") and the bootstrap. Keys added to results.json by it:

    scoring      "strict" | "medevalkit"
    bootstrap    {"resamples": 1000, "seed": 0, "level": 0.95}
    ci95         {"overall": [low, high], ...}: each metric above that is not null; absent when
                 resamples is 0 (``bootstrap.py``)
    by_category  {"image_organ": {"chest": {"n": 174, "correct": 51, "accuracy": 0.2931,
                 "ci95": [low, high]}, ...}, ...}: per release label (``benchmarks.CATEGORY_FIELDS``),
                 scored questions only; accuracy as ``overall``; {} for a benchmark without labels
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from megatron_infimed.eval import medevalkit, scoring
from megatron_infimed.eval.bootstrap import LEVEL, bootstrap_intervals
from megatron_infimed.eval.questions import Question
from megatron_infimed.eval.scoring import QuestionScore

# results.json's "scoring" -> the per-question rule
RULES: dict[str, Callable[[Question, str | None], QuestionScore]] = {
    "strict": scoring.score_question,
    "medevalkit": medevalkit.score_question,
}


@dataclass(frozen=True, kw_only=True, slots=True)
class ScoringConfig:
    """How answers are scored: ``infimed-eval --scoring, --bootstrap, --bootstrap-seed``."""

    rules: Literal["strict", "medevalkit"] = "strict"  # strict: ours (scoring.py); medevalkit: medevalkit.py
    bootstrap: int = 1000  # resamples for the 95% intervals; 0: no intervals
    seed: int = 0  # the bootstrap's seed: the same predictions give the same intervals

    def __post_init__(self) -> None:
        if self.rules not in RULES:
            raise ValueError(f"scoring {self.rules!r} is not one of {sorted(RULES)}")
        if self.bootstrap < 0:
            raise ValueError(f"bootstrap must be 0 (no intervals) or a number of resamples, got {self.bootstrap}")


@dataclass(frozen=True, kw_only=True, slots=True)
class Evaluation:
    records: list[dict[str, Any]]  # the lines of predictions.jsonl
    results: dict[str, Any]  # results.json


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _interval(values: Sequence[Sequence[float]], config: ScoringConfig) -> list[list[float]]:
    return [list(bounds) for bounds in bootstrap_intervals(values, config.bootstrap, config.seed)]


def _confidence_intervals(
    correct: Mapping[str, list[bool]], overlaps: Sequence[list[float]], config: ScoringConfig
) -> dict[str, list[float]]:
    """results.json's ``ci95``: one interval per metric that has questions to average over."""
    recall, precision, f1 = overlaps
    groups = [  # metrics over the same questions share their resamples
        (("overall",), [[ok for oks in correct.values() for ok in oks]]),
        (("closed_accuracy",), [correct["closed"]]),
        (("open_exact_match", "open_token_recall", "open_token_precision", "open_token_f1"),
         [correct["open"], recall, precision, f1]),
        (("accuracy",), [correct["choice"]]),
    ]
    intervals = {}
    for names, rows in groups:
        if rows[0]:
            intervals.update(zip(names, _interval(rows, config)))
    return intervals


def _by_category(labelled: Sequence[tuple[Mapping[str, str], bool]], config: ScoringConfig) -> dict[str, Any]:
    """results.json's ``by_category``: per category field, per label, over the scored questions."""
    groups: dict[str, dict[str, list[bool]]] = defaultdict(lambda: defaultdict(list))
    for categories, ok in labelled:
        for field, label in categories.items():
            groups[field][label].append(ok)
    breakdown: dict[str, Any] = {}
    for field, by_label in groups.items():
        breakdown[field] = {}
        for label, oks in sorted(by_label.items()):
            entry = {"n": len(oks), "correct": sum(oks), "accuracy": sum(oks) / len(oks)}
            if config.bootstrap:
                entry["ci95"] = _interval([oks], config)[0]
            breakdown[field][label] = entry
    return breakdown


def evaluate(
    questions: Sequence[Question],
    predictions: Mapping[str, str | None],
    *,
    benchmark: str | None = None,
    config: ScoringConfig | None = None,
) -> Evaluation:
    """Score every non-skipped question by ``config.rules`` (default: ``ScoringConfig()``); ids
    missing from ``predictions`` count as wrong."""
    config = config or ScoringConfig()
    score_question = RULES[config.rules]
    records = []
    labelled: list[tuple[Mapping[str, str], bool]] = []
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
        labelled.append((question.categories, score.correct))
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
        "scoring": config.rules,
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
        "bootstrap": {"resamples": config.bootstrap, "seed": config.seed, "level": LEVEL},
    }
    if config.bootstrap:
        results["ci95"] = _confidence_intervals(correct, (recall, precision, f1), config)
    results["by_category"] = _by_category(labelled, config)
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


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f} %"


def _interval_text(bounds: Sequence[float] | None) -> str:
    return "-" if bounds is None else f"{100 * bounds[0]:.2f} – {100 * bounds[1]:.2f} %"


def results_markdown(results: Mapping[str, Any]) -> str:
    """Readable tables: metrics in percent ("-" when not applicable) with their 95% intervals,
    the counts, then accuracy by category."""
    title = results.get("benchmark") or "benchmark"
    resamples = results["bootstrap"]["resamples"]
    intervals = results.get("ci95", {})
    lines = [f"# Evaluation: {title}", "",
             f"Scoring: {results['scoring']}. 95% intervals: "
             + (f"bootstrap, {resamples} resamples, seed {results['bootstrap']['seed']}." if resamples else "none."),
             "", "| metric | value | 95% interval |", "|---|---|---|"]
    for key, label in _MARKDOWN_ROWS:
        lines.append(f"| {label} | {_percent(results[key])} | {_interval_text(intervals.get(key))} |")
    lines += ["", "| count | value |", "|---|---|"]
    for key in ("n_total", "n_closed", "n_open", "n_choice", "n_skipped", "n_missing_predictions"):
        lines.append(f"| {key} | {results[key]} |")
    for reason, count in results["skipped"].items():
        lines.append(f"| skipped: {reason} | {count} |")
    if results["by_category"]:
        lines += ["", "## Accuracy by category", "", "| field | category | n | accuracy | 95% interval |",
                  "|---|---|---|---|---|"]
        for field, by_label in results["by_category"].items():
            for label, entry in by_label.items():
                lines.append(f"| {field} | {label} | {entry['n']} | {_percent(entry['accuracy'])} | "
                             f"{_interval_text(entry.get('ci95'))} |")
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
