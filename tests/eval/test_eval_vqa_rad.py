"""``score`` on the real VQA-RAD test split, expectations computed here straight from the release JSON."""

import json

import pytest

from megatron_infimed.cli.evaluate import main

RELEASE = "VQA_RAD_Dataset_Public.json"


@pytest.fixture(scope="module")
def test_records(vqa_rad_dir):
    records = json.loads((vqa_rad_dir / RELEASE).read_text())
    return [r for r in records if r["phrase_type"] in ("test_freeform", "test_para")]


def is_yes_no(record):
    return str(record["answer"]).strip().lower() in ("yes", "no")


def fixed_prediction(record):
    """Closed: always "yes". Open: the gold answer dressed up ("The ...!") for even qids, else "unknown"."""
    if is_yes_no(record):
        return "yes"
    return f"The {record['answer']}!" if int(record["qid"]) % 2 == 0 else "unknown"


@pytest.fixture(scope="module")
def scored(vqa_rad_dir, test_records, tmp_path_factory):
    out = tmp_path_factory.mktemp("vqa_rad")
    predictions = out / "predictions_in.jsonl"
    # Raw qids as the release spells them (ints, and the string "0" elsewhere in the file).
    predictions.write_text("".join(
        json.dumps({"id": r["qid"], "prediction": fixed_prediction(r)}) + "\n" for r in test_records
    ))
    code = main(["score", "--benchmark", "vqa_rad", "--data", str(vqa_rad_dir / RELEASE),
                 "--predictions", str(predictions), "--output", str(out / "report")])
    assert code == 0
    return json.loads((out / "report" / "results.json").read_text()), out / "report"


def test_test_split_has_451_questions_251_closed_by_the_yes_no_rule(scored, test_records):
    results, _ = scored
    assert len(test_records) == 451 and sum(map(is_yes_no, test_records)) == 251
    assert (results["n_total"], results["n_closed"], results["n_open"], results["n_skipped"]) == (451, 251, 200, 0)


def test_all_yes_closed_accuracy_is_the_share_of_yes_golds(scored, test_records):
    closed = [r for r in test_records if is_yes_no(r)]
    share_yes = sum(r["answer"].strip().lower() == "yes" for r in closed) / len(closed)
    assert scored[0]["closed_accuracy"] == pytest.approx(share_yes)


def test_open_metrics_equal_the_share_of_even_qids(scored, test_records):
    open_records = [r for r in test_records if not is_yes_no(r)]
    # Precondition for the hand computation: no gold contains the word "unknown".
    assert not any("unknown" in str(r["answer"]).lower().split() for r in open_records)
    share_even = sum(int(r["qid"]) % 2 == 0 for r in open_records) / len(open_records)
    results = scored[0]
    for key in ("open_exact_match", "open_token_recall", "open_token_precision", "open_token_f1"):
        assert results[key] == pytest.approx(share_even), key


def test_overall_counts_closed_correct_and_open_exact_matches(scored, test_records):
    yes = sum(is_yes_no(r) and r["answer"].strip().lower() == "yes" for r in test_records)
    even_open = sum(not is_yes_no(r) and int(r["qid"]) % 2 == 0 for r in test_records)
    assert scored[0]["overall"] == pytest.approx((yes + even_open) / 451)


def test_per_question_lines_use_string_ids(scored, test_records):
    lines = [json.loads(line) for line in (scored[1] / "predictions.jsonl").read_text().splitlines()]
    assert [line["id"] for line in lines] == [str(r["qid"]) for r in test_records]
    assert all(isinstance(line["correct"], bool) for line in lines)
