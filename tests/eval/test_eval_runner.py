"""``run_benchmark`` with fake answer functions, ``score_predictions`` and its bad inputs, the report files."""

import json

import pytest

from megatron_infimed.eval.predictions import PredictionsError, read_predictions
from megatron_infimed.eval.questions import Question
from megatron_infimed.eval.runner import run_benchmark, score_predictions

QUESTIONS = [
    Question(id="c1", question="Aneurysm?", answer="yes", type="closed"),
    Question(id="c2", question="Fracture?", answer="No", type="closed"),
    Question(id="s1", question="Mass?", answer="yes", type="closed", skip_reason="image_missing"),
    Question(id="c3", question="Effusion?", answer="Yes", type="closed"),
    Question(id="o1", question="Where?", answer="the left lung", type="open"),
]


def always_yes(batch):
    return ["Yes." for _ in batch]


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


# --- run_benchmark ------------------------------------------------------------------------------


def test_run_with_always_yes_gives_hand_computed_results(tmp_path):
    results = run_benchmark(QUESTIONS, always_yes, tmp_path, progress=False, benchmark="toy")
    # closed: c1 yes ok, c2 no wrong, c3 yes ok -> 2/3; open o1 "yes" vs "left lung" -> 0 everywhere;
    # overall = (2 + 0) / 4 scored questions (s1 skipped).
    expected = {
        "benchmark": "toy",
        "scoring": "strict",
        "closed_accuracy": pytest.approx(2 / 3),
        "open_exact_match": 0.0,
        "open_token_recall": 0.0,
        "open_token_precision": 0.0,
        "open_token_f1": 0.0,
        "accuracy": None,
        "overall": 0.5,
        "n_closed": 3,
        "n_open": 1,
        "n_choice": 0,
        "n_total": 5,
        "n_skipped": 1,
        "n_missing_predictions": 0,
        "skipped": {"image_missing": 1},
    }
    assert {key: results[key] for key in expected} == expected
    assert set(results) - set(expected) == {"bootstrap", "ci95", "by_category"}  # see test_eval_uncertainty.py


def test_run_writes_one_prediction_line_per_question(tmp_path):
    run_benchmark(QUESTIONS, always_yes, tmp_path, progress=False)
    lines = read_jsonl(tmp_path / "predictions.jsonl")
    assert [(line["id"], line["prediction"], line["correct"], line["skipped"]) for line in lines] == [
        ("c1", "Yes.", True, None),
        ("c2", "Yes.", False, None),
        ("s1", None, None, "image_missing"),
        ("c3", "Yes.", True, None),
        ("o1", "Yes.", False, None),
    ]
    assert {"id", "question", "answer", "prediction", "type", "correct"} <= set(lines[0])
    assert json.loads((tmp_path / "results.json").read_text())["n_skipped"] == 1


def test_run_results_md_is_a_table_in_percent(tmp_path):
    run_benchmark(QUESTIONS, always_yes, tmp_path, progress=False, benchmark="toy")
    markdown = (tmp_path / "results.md").read_text()
    assert "# Evaluation: toy" in markdown
    assert "| Closed accuracy (yes/no rule) | 66.67 % |" in markdown
    assert "| Multiple-choice accuracy | - |" in markdown
    assert "| skipped: image_missing | 1 |" in markdown


def test_run_batches_answerable_questions_and_never_sends_skipped_ones(tmp_path):
    seen = []

    def recording(batch):
        seen.append([q.id for q in batch])
        return ["no"] * len(batch)

    run_benchmark(QUESTIONS, recording, tmp_path, batch_size=3, progress=False)
    assert seen == [["c1", "c2", "c3"], ["o1"]]


def test_run_limit_keeps_the_first_questions_in_benchmark_order(tmp_path):
    results = run_benchmark(QUESTIONS, always_yes, tmp_path, limit=3, progress=False)
    assert (results["n_total"], results["n_skipped"], results["n_closed"], results["closed_accuracy"]) == (3, 1, 2, 0.5)


def test_run_open_answers_get_token_metrics(tmp_path):
    answers = {"c1": "yes", "c2": "no", "c3": "yes", "o1": "left lung apex"}
    results = run_benchmark(QUESTIONS, lambda batch: [answers[q.id] for q in batch], tmp_path, progress=False)
    # gold {left, lung}, prediction {left, lung, apex}: recall 1, precision 2/3, F1 0.8; not exact.
    assert results["open_exact_match"] == 0.0
    assert results["open_token_recall"] == 1.0
    assert results["open_token_precision"] == pytest.approx(2 / 3)
    assert results["open_token_f1"] == pytest.approx(0.8)
    assert results["overall"] == 0.75


def test_run_answer_fn_returning_the_wrong_count_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="batch starting at question c1; expected a list of 2 strings"):
        run_benchmark(QUESTIONS, lambda batch: ["yes"], tmp_path, batch_size=2, progress=False)


def test_run_predictions_can_be_scored_again_with_the_same_results(tmp_path):
    first = run_benchmark(QUESTIONS, always_yes, tmp_path / "run", progress=False)
    again = score_predictions(QUESTIONS, tmp_path / "run" / "predictions.jsonl", tmp_path / "score")
    assert again == first


def test_choice_benchmark_reports_accuracy(tmp_path):
    options = {"A": "Axial", "B": "Coronal"}
    questions = [
        Question(id="1", question="?", answer="A", type="choice", options=options),
        Question(id="2", question="?", answer="B", type="choice", options=options),
        Question(id="3", question="?", answer="B", type="choice", options=options),
    ]
    answers = {"1": "(A) Axial", "2": "Answer: B", "3": "axial"}
    results = run_benchmark(questions, lambda batch: [answers[q.id] for q in batch], tmp_path, progress=False)
    assert (results["accuracy"], results["overall"], results["n_choice"]) == (pytest.approx(2 / 3),) * 2 + (3,)
    assert results["closed_accuracy"] is None and results["n_closed"] == 0
    assert [line["extracted"] for line in read_jsonl(tmp_path / "predictions.jsonl")] == ["A", "B", "A"]


# --- score_predictions and bad prediction files -------------------------------------------------


def write_lines(path, lines):
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return path


def test_question_without_prediction_counts_wrong(tmp_path):
    path = write_lines(tmp_path / "p.jsonl", [{"id": "c1", "prediction": "yes"}, {"id": "o1", "prediction": None}])
    results = score_predictions(QUESTIONS, path, tmp_path / "out")
    # c1 right; c2, c3 (absent) and o1 (null) wrong; s1 skipped.
    assert (results["closed_accuracy"], results["overall"]) == (pytest.approx(1 / 3), 0.25)
    assert results["n_missing_predictions"] == 3


def test_prediction_for_a_skipped_question_is_not_scored(tmp_path):
    path = write_lines(tmp_path / "p.jsonl", [{"id": "s1", "prediction": "yes"}])
    results = score_predictions(QUESTIONS, path, tmp_path / "out")
    assert (results["n_skipped"], results["n_closed"] + results["n_open"], results["overall"]) == (1, 4, 0.0)


def test_integer_prediction_id_matches_string_question_id(tmp_path):
    questions = [Question(id="0", question="?", answer="yes", type="closed")]
    path = write_lines(tmp_path / "p.jsonl", [{"id": 0, "prediction": "yes"}])
    assert read_predictions(path, ["0"]).answers == {"0": "yes"}
    assert score_predictions(questions, path, tmp_path / "out")["closed_accuracy"] == 1.0


def test_unknown_prediction_id_is_an_error_naming_id_and_line(tmp_path):
    path = write_lines(tmp_path / "p.jsonl", [{"id": "c1", "prediction": "yes"}, {"id": "zz9", "prediction": "no"}])
    with pytest.raises(PredictionsError, match=r"p.jsonl line 2: id 'zz9' is not a question of this benchmark"):
        score_predictions(QUESTIONS, path, tmp_path / "out")


def test_duplicate_prediction_id_is_an_error_naming_both_lines(tmp_path):
    path = write_lines(tmp_path / "p.jsonl", [{"id": "c1", "prediction": "yes"}, "", {"id": "c1", "prediction": "no"}])
    with pytest.raises(PredictionsError, match=r"line 3: id 'c1' was already given on line 1"):
        score_predictions(QUESTIONS, path, tmp_path / "out")


@pytest.mark.parametrize(
    "bad_line, message",
    [
        ('{"id": "c1", "prediction": ', "line 2: not valid JSON"),
        ('["c1", "yes"]', 'line 2: expected an object with "id" and "prediction"'),
        ('{"id": "c1"}', 'line 2: expected an object with "id" and "prediction"'),
        ('{"id": 1.5, "prediction": "yes"}', "line 2: id should be a string or integer, got 1.5"),
        ('{"id": "c2", "prediction": 7}', r"line 2 \(id c2\): prediction should be a string or null"),
    ],
)
def test_malformed_prediction_line_is_an_error_naming_the_line(tmp_path, bad_line, message):
    path = write_lines(tmp_path / "p.jsonl", [{"id": "c3", "prediction": "yes"}, bad_line])
    with pytest.raises(PredictionsError, match=message):
        read_predictions(path, [q.id for q in QUESTIONS])


def test_failed_scoring_writes_no_results(tmp_path):
    path = write_lines(tmp_path / "p.jsonl", ["not json"])
    with pytest.raises(PredictionsError):
        score_predictions(QUESTIONS, path, tmp_path / "out")
    assert not (tmp_path / "out" / "results.json").exists()


def test_empty_predictions_file_is_an_error_naming_it(tmp_path):
    path = write_lines(tmp_path / "p.jsonl", ["", "  "])
    with pytest.raises(PredictionsError, match=r"p.jsonl holds no predictions"):
        score_predictions(QUESTIONS, path, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_non_utf8_predictions_are_an_error_naming_the_file_and_line(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_bytes(b'{"id": "c1", "prediction": "yes"}\n{"id": "c2", "prediction": "n\xf6"}\n')
    with pytest.raises(PredictionsError, match=r"p.jsonl line 2: not UTF-8 text \(byte 0xf6 at column 30\)"):
        read_predictions(path, [q.id for q in QUESTIONS])


def test_a_runs_skipped_questions_stay_skipped_when_its_predictions_are_scored(tmp_path):
    run_benchmark(QUESTIONS, always_yes, tmp_path / "run", progress=False)
    unchecked = [q if q.skip_reason is None else Question(id=q.id, question=q.question, answer=q.answer, type=q.type)
                 for q in QUESTIONS]  # as loaded without looking at the images
    results = score_predictions(unchecked, tmp_path / "run" / "predictions.jsonl", tmp_path / "score")
    assert (results["n_skipped"], results["skipped"], results["overall"]) == (1, {"image_missing": 1}, 0.5)


def test_a_skip_reason_with_a_prediction_is_an_error(tmp_path):
    path = write_lines(tmp_path / "p.jsonl", [{"id": "c1", "prediction": "yes", "skipped": "image_missing"}])
    with pytest.raises(PredictionsError, match=r"line 1 \(id c1\): a skipped question has no prediction"):
        read_predictions(path, [q.id for q in QUESTIONS])


def test_an_unknown_skip_reason_is_an_error(tmp_path):
    path = write_lines(tmp_path / "p.jsonl", [{"id": "c1", "prediction": None, "skipped": "too_hard"}])
    with pytest.raises(PredictionsError, match=r"line 1 \(id c1\): skipped should be one of .* got 'too_hard'"):
        read_predictions(path, [q.id for q in QUESTIONS])
