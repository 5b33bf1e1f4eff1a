"""The two ways to evaluate: answer the questions now (``run_benchmark``) or score answers made
elsewhere (``score_predictions``). Both end in the same ``evaluate`` + ``write_report``.

``run_benchmark`` knows nothing of models: it takes ``answer_fn(batch) -> list[str]``, one answer
per question in the batch, in order. Skipped questions (unusable image) are never sent to it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

from tqdm import tqdm

from megatron_infimed.eval.predictions import read_predictions
from megatron_infimed.eval.questions import Question
from megatron_infimed.eval.report import Evaluation, ScoringConfig, evaluate, write_report

AnswerFn = Callable[[list[Question]], list[str]]


def run_benchmark(
    questions: Sequence[Question],
    answer_fn: AnswerFn,
    output_dir: str | Path,
    *,
    batch_size: int = 8,
    limit: int | None = None,
    progress: bool = True,
    benchmark: str | None = None,
    config: ScoringConfig | None = None,
) -> dict:
    """Answer ``questions`` in batches, score them by ``config``, write the report; returns results.json's dict.

    ``limit`` keeps the first ``limit`` questions in benchmark order, skipped ones included, so a
    limited run covers the same questions whatever the images' state.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be non-negative, got {limit}")
    questions = list(questions)[:limit]
    answerable = [q for q in questions if q.skip_reason is None]
    predictions: dict[str, str] = {}
    with tqdm(total=len(answerable), desc=benchmark or "eval", unit="question", disable=not progress) as bar:
        for start in range(0, len(answerable), batch_size):
            batch = answerable[start : start + batch_size]
            answers = answer_fn(batch)
            if len(answers) != len(batch) or not all(isinstance(a, str) for a in answers):
                raise ValueError(
                    f"answer_fn returned {answers!r} for the batch starting at question {batch[0].id}; "
                    f"expected a list of {len(batch)} strings"
                )
            predictions.update((q.id, a) for q, a in zip(batch, answers))
            bar.update(len(batch))
    return _finish(evaluate(questions, predictions, benchmark=benchmark, config=config), output_dir)


def score_predictions(
    questions: Sequence[Question],
    predictions_path: str | Path,
    output_dir: str | Path,
    *,
    benchmark: str | None = None,
    config: ScoringConfig | None = None,
) -> dict:
    """Score an existing predictions JSONL against ``questions`` by ``config``; returns results.json's dict.

    A question the file marks as skipped (a run's line for an unusable image) stays skipped, so a
    run's predictions score the same again where its images are not at hand.
    """
    predictions = read_predictions(predictions_path, (q.id for q in questions))
    questions = [q if q.skip_reason or q.id not in predictions.skipped
                 else replace(q, skip_reason=predictions.skipped[q.id]) for q in questions]
    return _finish(evaluate(questions, predictions.answers, benchmark=benchmark, config=config), output_dir)


def _finish(evaluation: Evaluation, output_dir: str | Path) -> dict:
    write_report(output_dir, evaluation)
    return evaluation.results
