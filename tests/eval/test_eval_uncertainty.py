"""Bootstrap intervals and per-category accuracy in results.json / results.md."""

import json
import time
from collections import defaultdict

import numpy as np
import pytest

from megatron_infimed.cli.evaluate import main
from megatron_infimed.eval.bootstrap import bootstrap_intervals
from megatron_infimed.eval.questions import Question
from megatron_infimed.eval.report import ScoringConfig, evaluate, results_markdown


def hits(right, total):
    return [1.0] * right + [0.0] * (total - right)


# --- bootstrap_intervals ------------------------------------------------------------------------


def test_interval_contains_the_point_estimate():
    (low, high), = bootstrap_intervals([hits(30, 40)], resamples=1000, seed=0)
    assert low < 0.75 < high


def test_interval_is_reproducible_with_the_seed():
    values = [np.random.default_rng(7).random(200)]  # token-F1-like values: the bounds are not on a 1/n grid
    assert bootstrap_intervals(values, 1000, seed=3) == bootstrap_intervals(values, 1000, seed=3)
    assert bootstrap_intervals(values, 1000, seed=3) != bootstrap_intervals(values, 1000, seed=4)


def test_interval_shrinks_with_more_questions():
    (small_low, small_high), = bootstrap_intervals([hits(30, 40)], 1000, seed=0)
    (large_low, large_high), = bootstrap_intervals([hits(300, 400)], 1000, seed=0)
    # The width goes as 1/sqrt(n): ten times the questions, about a third of the width.
    assert large_high - large_low < 0.5 * (small_high - small_low)


def test_equal_values_give_a_zero_width_interval():
    assert bootstrap_intervals([hits(5, 5), hits(0, 5)], 100, seed=0) == [(1.0, 1.0), (0.0, 0.0)]


def test_rows_are_resampled_together():
    values = hits(30, 40)
    (first, second) = bootstrap_intervals([values, values], 1000, seed=0)
    assert first == second == bootstrap_intervals([values], 1000, seed=0)[0]


def test_bootstrap_of_a_few_thousand_questions_takes_well_under_a_second():
    values = (np.random.default_rng(0).random(3000) < 0.6).astype(float)
    start = time.perf_counter()
    bootstrap_intervals([values], resamples=1000, seed=0)
    assert time.perf_counter() - start < 1.0


# --- results.json -------------------------------------------------------------------------------

QUESTIONS = [
    *(Question(id=f"c{i}", question="?", answer="yes" if i % 2 else "no", type="closed",
               categories={"organ": "chest" if i < 6 else "head"}) for i in range(10)),
    *(Question(id=f"o{i}", question="?", answer="left lung", type="open", categories={"organ": "chest"})
      for i in range(4)),
    Question(id="n", question="?", answer="yes", type="closed"),  # no label: in no category
]
ANSWERS = {**{f"c{i}": "yes" for i in range(10)}, "o0": "left lung", "o1": "right lung", "n": "yes"}


def test_every_metric_gets_an_interval_around_its_value():
    results = evaluate(QUESTIONS, ANSWERS).results
    assert set(results["ci95"]) == {"overall", "closed_accuracy", "open_exact_match", "open_token_recall",
                                    "open_token_precision", "open_token_f1"}  # no choice question: no accuracy
    for metric, (low, high) in results["ci95"].items():
        assert low <= results[metric] <= high, metric
    assert results["bootstrap"] == {"resamples": 1000, "seed": 0, "level": 0.95}


def test_bootstrap_zero_omits_the_intervals():
    results = evaluate(QUESTIONS, ANSWERS, config=ScoringConfig(bootstrap=0)).results
    assert "ci95" not in results
    assert all("ci95" not in entry for entry in results["by_category"]["organ"].values())
    assert results["bootstrap"]["resamples"] == 0
    assert "| Closed accuracy (yes/no rule) | 54.55 % | - |" in results_markdown(results)


def test_by_category_counts_scored_questions_per_label():
    # chest: c0-c5 (yes right for c1, c3, c5) + o0-o3 (o0 right) = 4/10; head: c6-c9 (c7, c9) = 2/4.
    by_organ = evaluate(QUESTIONS, ANSWERS).results["by_category"]["organ"]
    assert {label: (e["n"], e["correct"], e["accuracy"]) for label, e in by_organ.items()} == {
        "chest": (10, 4, 0.4), "head": (4, 2, 0.5)}
    assert all(e["ci95"][0] <= e["accuracy"] <= e["ci95"][1] for e in by_organ.values())


def test_benchmark_without_labels_has_an_empty_breakdown():
    questions = [Question(id="1", question="?", answer="yes", type="closed")]
    assert evaluate(questions, {"1": "yes"}).results["by_category"] == {}


def test_results_md_shows_intervals_and_categories():
    markdown = results_markdown(evaluate(QUESTIONS, ANSWERS).results)
    assert "Scoring: strict. 95% intervals: bootstrap, 1000 resamples, seed 0." in markdown
    assert "| metric | value | 95% interval |" in markdown
    assert "| organ | head | 4 | 50.00 % |" in markdown


@pytest.mark.parametrize("bad, message", [({"bootstrap": -1}, "bootstrap must be 0"),
                                          ({"rules": "lenient"}, "scoring 'lenient' is not one of")])
def test_scoring_config_rejects_bad_values(bad, message):
    with pytest.raises(ValueError, match=message):
        ScoringConfig(**bad)


# --- by_category on the real VQA-RAD release ----------------------------------------------------

ORGAN = {"HEAD": "head", "CHEST": "chest", "ABD": "abdomen"}


@pytest.fixture(scope="module")
def vqa_rad_all_yes(vqa_rad_dir, tmp_path_factory):
    """The test split's records and the results of answering "yes" to every question."""
    release = vqa_rad_dir / "VQA_RAD_Dataset_Public.json"
    records = [r for r in json.loads(release.read_text()) if r["phrase_type"] in ("test_freeform", "test_para")]
    out = tmp_path_factory.mktemp("vqa_rad_categories")
    predictions = out / "predictions_in.jsonl"
    predictions.write_text("".join(json.dumps({"id": r["qid"], "prediction": "yes"}) + "\n" for r in records))
    assert main(["score", "--benchmark", "vqa_rad", "--data", str(release), "--predictions", str(predictions),
                 "--output", str(out / "report")]) == 0
    return records, json.loads((out / "report" / "results.json").read_text())


@pytest.mark.parametrize("field, label_of", [
    ("answer_type", lambda r: r["answer_type"].strip().upper()),  # the release writes "CLOSED " too
    ("question_type", lambda r: r["question_type"].strip()),  # "POS, PRES" stays one category
    ("image_organ", lambda r: ORGAN[r["image_organ"].strip().upper()]),
])
def test_vqa_rad_by_category_is_the_share_of_yes_golds_per_label(vqa_rad_all_yes, field, label_of):
    records, results = vqa_rad_all_yes
    expected = defaultdict(lambda: [0, 0])  # label -> [n, gold "yes"]; "yes" is right exactly there
    for record in records:
        expected[label_of(record)][0] += 1
        expected[label_of(record)][1] += str(record["answer"]).strip().lower() == "yes"
    breakdown = results["by_category"][field]
    assert {label: (e["n"], e["correct"]) for label, e in breakdown.items()} == {
        label: tuple(counts) for label, counts in expected.items()}
    assert sum(e["n"] for e in breakdown.values()) == 451
    assert all(e["ci95"][0] <= e["accuracy"] <= e["ci95"][1] for e in breakdown.values())


def test_vqa_rad_answer_type_split_is_272_closed_179_open(vqa_rad_all_yes):
    by_answer_type = vqa_rad_all_yes[1]["by_category"]["answer_type"]
    assert {label: e["n"] for label, e in by_answer_type.items()} == {"CLOSED": 272, "OPEN": 179}
